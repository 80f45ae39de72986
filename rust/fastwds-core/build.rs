//! Compiles `csrc/jdhuff.c`, libjpeg-turbo's Huffman decoder with a faster AC path, into this crate so the
//! linker takes it instead of the copy inside turbojpeg-sys's static libjpeg-turbo.
//!
//! Why the linker prefers ours: it is bundled into this crate's rlib, which the final link reads before
//! turbojpeg-sys's; `image::jpeg` calls `fastwds_fast_ac_scans`, so our object is pulled in while that rlib
//! is read, and it defines every global of libjpeg-turbo's `jdhuff.o`, so that member is never needed. Had
//! both been pulled in, the link would fail on duplicate symbols rather than pick one silently.
//!
//! The file includes libjpeg-turbo's private headers: the source tree and generated configuration of the
//! exact libjpeg-turbo that turbojpeg-sys built (its version is pinned in Cargo.toml), found through the
//! `include` path it exports and the CMake cache beside it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/jdhuff.c");
    println!("cargo:rerun-if-changed=build.rs");
    // Our jdhuff.c can only take the place of libjpeg-turbo's inside a static libjpeg-turbo built from
    // turbojpeg-sys's vendored source; a shared or system library would keep its own, silently.
    for var in ["TURBOJPEG_SOURCE", "TURBOJPEG_DYNAMIC", "TURBOJPEG_SHARED", "TURBOJPEG_STATIC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let setting = |var: &str| env::var(var).unwrap_or_default().to_ascii_lowercase();
    if !matches!(setting("TURBOJPEG_SOURCE").as_str(), "" | "vendor")
        || matches!(setting("TURBOJPEG_DYNAMIC").as_str(), "1" | "true" | "yes")
        || matches!(setting("TURBOJPEG_SHARED").as_str(), "1" | "true" | "yes")
    {
        fail("fastwds-core links libjpeg-turbo statically from turbojpeg-sys's vendored source: unset TURBOJPEG_SOURCE, TURBOJPEG_DYNAMIC and TURBOJPEG_SHARED");
    }
    let include = match env::var("DEP_TURBOJPEG_INCLUDE") {
        Ok(paths) => PathBuf::from(paths.split(',').next().unwrap_or_default()),
        Err(_) => fail("turbojpeg-sys did not export its include path (DEP_TURBOJPEG_INCLUDE)"),
    };
    // turbojpeg-sys runs CMake with its install prefix at OUT_DIR and its build tree at OUT_DIR/build.
    let build = include.parent().map(|out| out.join("build")).unwrap_or_default();
    let source = libjpeg_source_dir(&build.join("CMakeCache.txt")).join("src");
    for header in [include.join("jconfig.h"), build.join("jconfigint.h"), source.join("jpegint.h")] {
        if !header.is_file() {
            fail(&format!("libjpeg-turbo header not found: {}", header.display()));
        }
    }
    cc::Build::new()
        .file("csrc/jdhuff.c")
        .include(&build)
        .include(&include)
        .include(&source)
        .warnings(false)
        .compile("fastwds_jdhuff");
}

/// The libjpeg-turbo source tree turbojpeg-sys configured, as its CMake cache records it.
fn libjpeg_source_dir(cache: &Path) -> PathBuf {
    let text = fs::read_to_string(cache).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", cache.display())));
    text.lines()
        .find_map(|line| line.strip_prefix("libjpeg-turbo_SOURCE_DIR:STATIC="))
        .map(PathBuf::from)
        .unwrap_or_else(|| fail(&format!("no libjpeg-turbo_SOURCE_DIR in {}", cache.display())))
}

fn fail(message: &str) -> ! {
    eprintln!("fastwds-core build: {message}");
    std::process::exit(1);
}
