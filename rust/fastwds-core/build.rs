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
//! `include` path it exports and the CMake cache beside it, which also tells whether that build is static.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/jdhuff.c");
    println!("cargo:rerun-if-changed=build.rs");
    let include = match env::var("DEP_TURBOJPEG_INCLUDE") {
        Ok(paths) => PathBuf::from(paths.split(',').next().unwrap_or_default()),
        Err(_) => fail("turbojpeg-sys did not export its include path (DEP_TURBOJPEG_INCLUDE)"),
    };
    // turbojpeg-sys runs CMake with its install prefix at OUT_DIR and its build tree at OUT_DIR/build.
    let build = include.parent().map(|out| out.join("build")).unwrap_or_default();
    let cache_path = build.join("CMakeCache.txt");
    println!("cargo:rerun-if-changed={}", cache_path.display());
    // Only there, and only linked statically, does our jdhuff.c take the place of libjpeg-turbo's own; a shared
    // or system libjpeg-turbo would keep its copy, silently. What turbojpeg-sys built (from its TURBOJPEG_*
    // settings) is what its CMake cache says.
    let needs = "fastwds-core needs turbojpeg-sys to build libjpeg-turbo statically from its vendored source \
                 (TURBOJPEG_SOURCE, TURBOJPEG_STATIC, TURBOJPEG_DYNAMIC and TURBOJPEG_SHARED unset)";
    let cache = fs::read_to_string(&cache_path)
        .unwrap_or_else(|e| fail(&format!("{needs}; cannot read {}: {e}", cache_path.display())));
    if cache_value(&cache, "ENABLE_STATIC") != Some("1") || cache_value(&cache, "ENABLE_SHARED") != Some("0") {
        fail(&format!("{needs}; {} has a shared build", cache_path.display()));
    }
    let source = match cache_value(&cache, "libjpeg-turbo_SOURCE_DIR") {
        Some(dir) => PathBuf::from(dir).join("src"),
        None => fail(&format!("no libjpeg-turbo_SOURCE_DIR in {}", cache_path.display())),
    };
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

/// The value of `name` in a CMake cache (`NAME:TYPE=value` lines).
fn cache_value<'a>(cache: &'a str, name: &str) -> Option<&'a str> {
    cache.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.split_once('=').map(|(_, v)| v))
}

fn fail(message: &str) -> ! {
    eprintln!("fastwds-core build: {message}");
    std::process::exit(1);
}
