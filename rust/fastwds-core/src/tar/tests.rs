//! Unit tests of the streaming tar parser, on archives written by the `tar` crate and built by hand.

use super::*;
use crate::error::ErrorKind;
use std::io::Cursor;

// ---------------------------------------------------------------------------------------------------------
// Building archives by hand
// ---------------------------------------------------------------------------------------------------------

const POSIX_MAGIC: &[u8; 8] = b"ustar\x0000";
const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// Writes `value` as a zero-padded octal number followed by a NUL into `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert_eq!(text.len(), digits, "{value} does not fit in {digits} octal digits");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// The unsigned checksum of a header block, counting the checksum field as spaces.
fn unsigned_sum(block: &[u8; 512]) -> u64 {
    block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum()
}

/// The signed checksum (bytes as i8), as some old writers computed it.
fn signed_sum(block: &[u8; 512]) -> i64 {
    block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { i64::from(b as i8) }).sum()
}

/// Stores a checksum value the way GNU tar does: six octal digits, NUL, space.
fn put_checksum(block: &mut [u8; 512], value: u64) {
    let text = format!("{value:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

fn seal(block: &mut [u8; 512]) {
    let sum = unsigned_sum(block);
    put_checksum(block, sum);
}

/// A header block without its checksum.
fn raw_header(name: &[u8], size: u64, typeflag: u8, magic: &[u8; 8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() <= 100);
    h[..name.len()].copy_from_slice(name);
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    put_octal(&mut h[124..136], size);
    put_octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    h[257..265].copy_from_slice(magic);
    h
}

/// A complete POSIX ustar header block.
fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = raw_header(name.as_bytes(), size, typeflag, POSIX_MAGIC);
    seal(&mut h);
    h
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A header (already sealed) followed by its data and padding.
fn entry(h: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    pad(&mut out);
    out
}

/// A regular-file member with a POSIX ustar header.
fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(header(name, data.len() as u64, b'0'), data)
}

/// One pax record `"%d key=value\n"`, whose length counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // space, '=', newline
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    assert_eq!(out.len(), len);
    out
}

/// A pax extended header (`x` or `g`) carrying the given records.
fn pax(typeflag: u8, records: &[(&str, &[u8])]) -> Vec<u8> {
    let payload: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    entry(header("././@PaxHeader", payload.len() as u64, typeflag), &payload)
}

/// A GNU long-name (`L`) or long-link (`K`) record.
fn gnu_long(typeflag: u8, name: &str) -> Vec<u8> {
    let mut payload = name.as_bytes().to_vec();
    payload.push(0);
    let mut h = raw_header(b"././@LongLink", payload.len() as u64, typeflag, GNU_MAGIC);
    seal(&mut h);
    entry(h, &payload)
}

fn end() -> Vec<u8> {
    vec![0; 1024]
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------------------
// Reading archives
// ---------------------------------------------------------------------------------------------------------

/// Reads every member with its data.
fn read_all_from<R: Read>(r: R) -> Result<Vec<(MemberHeader, Vec<u8>)>, TarError> {
    let mut tar = TarReader::new(r);
    let mut out = Vec::new();
    while let Some(h) = tar.next_member()? {
        let mut data = Vec::new();
        tar.read_data(&h, &mut data)?;
        out.push((h, data));
    }
    Ok(out)
}

fn read_all(bytes: &[u8]) -> Result<Vec<(MemberHeader, Vec<u8>)>, TarError> {
    read_all_from(Cursor::new(bytes))
}

/// Reads every member header without reading data (the parser skips it).
fn headers_only(bytes: &[u8]) -> Result<Vec<MemberHeader>, TarError> {
    let mut tar = TarReader::new(Cursor::new(bytes));
    let mut out = Vec::new();
    while let Some(h) = tar.next_member()? {
        out.push(h);
    }
    Ok(out)
}

fn names(members: &[(MemberHeader, Vec<u8>)]) -> Vec<&str> {
    members.iter().map(|(h, _)| h.name.as_str()).collect()
}

fn expect_err(bytes: &[u8]) -> TarError {
    match read_all(bytes) {
        Ok(m) => panic!("expected an error, got {} members: {:?}", m.len(), names(&m)),
        Err(e) => e,
    }
}

/// Returns at most `n` bytes per read call, to exercise short reads everywhere.
struct Trickle<R> {
    inner: R,
    n: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.n);
        self.inner.read(&mut buf[..n])
    }
}

/// Fails every other read call with `Interrupted`, which every reader must retry.
struct Interrupting<R> {
    inner: R,
    flip: bool,
}

impl<R: Read> Read for Interrupting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flip = !self.flip;
        if self.flip {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
        }
        let n = buf.len().min(100);
        self.inner.read(&mut buf[..n])
    }
}

/// Yields `bytes`, then fails with the given error kind.
struct FailAfter {
    bytes: Cursor<Vec<u8>>,
    kind: io::ErrorKind,
}

impl Read for FailAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(self.kind, "injected failure"));
        }
        Ok(n)
    }
}

/// Builds an archive with the `tar` crate from (header, name, data) triples.
fn tar_crate_archive(members: &[(tar::Header, &str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, name, data) in members {
        let mut h = h.clone();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data.as_slice()).expect("append");
    }
    b.into_inner().expect("finish")
}

fn data_of(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Sizes and layouts
// ---------------------------------------------------------------------------------------------------------

#[test]
fn member_sizes_around_the_block_size_ustar_and_gnu() {
    let sizes = [0usize, 1, 511, 512, 513, 1023, 1024, 1025, 0, 3000];
    for (label, make) in [("ustar", tar::Header::new_ustar as fn() -> tar::Header), ("gnu", tar::Header::new_gnu)] {
        let members: Vec<(tar::Header, String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| (make(), format!("s{i:02}.size{size}.bin"), data_of(size, i as u8)))
            .collect();
        let borrowed: Vec<(tar::Header, &str, Vec<u8>)> =
            members.iter().map(|(h, n, d)| (h.clone(), n.as_str(), d.clone())).collect();
        let bytes = tar_crate_archive(&borrowed);
        let got = read_all(&bytes).unwrap_or_else(|e| panic!("{label}: {e:?}"));
        assert_eq!(got.len(), sizes.len(), "{label}");
        let mut offset = 0u64;
        for ((h, data), (_, name, want)) in got.iter().zip(&members) {
            assert_eq!(&h.name, name, "{label}");
            assert_eq!(h.size, want.len() as u64, "{label} {name}");
            assert_eq!(h.offset, offset, "{label} {name}");
            assert_eq!(data, want, "{label} {name}");
            offset += 512 + padded(want.len() as u64);
        }
    }
}

#[test]
fn headers_only_skips_unread_data_and_padding() {
    let sizes = [0usize, 1, 511, 512, 513, 5000];
    let parts: Vec<Vec<u8>> =
        sizes.iter().enumerate().map(|(i, &s)| file(&format!("m{i}.dat"), &data_of(s, 7))).collect();
    let mut bytes = cat(&parts);
    bytes.extend(end());
    let got = headers_only(&bytes).expect("parse");
    let mut offset = 0;
    for (h, &size) in got.iter().zip(&sizes) {
        assert_eq!(h.size, size as u64);
        assert_eq!(h.offset, offset);
        offset += 512 + padded(size as u64);
    }
    assert_eq!(got.len(), sizes.len());
}

#[test]
fn skip_data_then_read_the_next_member() {
    let bytes = cat(&[file("a.txt", &data_of(700, 1)), file("b.txt", b"bee"), end()]);
    let mut tar = TarReader::new(Cursor::new(&bytes));
    let a = tar.next_member().expect("ok").expect("a");
    tar.skip_data().expect("skip");
    assert_eq!(tar.offset(), 512 + 1024);
    let b = tar.next_member().expect("ok").expect("b");
    assert_eq!(b.name, "b.txt");
    assert_eq!(b.offset, 1536);
    let mut data = Vec::new();
    tar.read_data(&b, &mut data).expect("read");
    assert_eq!(data, b"bee");
    assert!(tar.next_member().expect("end").is_none());
    assert_eq!(a.name, "a.txt");
}

#[test]
fn read_data_clears_the_buffer_first() {
    let bytes = cat(&[file("a.txt", b"xyz"), end()]);
    let mut tar = TarReader::new(Cursor::new(&bytes));
    let h = tar.next_member().expect("ok").expect("a");
    let mut data = b"stale contents".to_vec();
    tar.read_data(&h, &mut data).expect("read");
    assert_eq!(data, b"xyz");
}

#[test]
fn end_of_archive_is_sticky_after_the_trailing_zero_blocks() {
    let bytes = cat(&[file("a.txt", b"1"), end(), vec![0u8; 300]]);
    let mut tar = TarReader::new(Cursor::new(&bytes));
    let h = tar.next_member().expect("ok").expect("a");
    tar.skip_data().expect("skip");
    assert!(tar.next_member().expect("end").is_none());
    assert_eq!(tar.offset(), bytes.len() as u64, "the zero padding after the marker is consumed");
    assert!(tar.next_member().expect("still the end").is_none());
    assert_eq!(h.size, 1);
}

#[test]
fn junk_after_the_end_marker_is_a_format_error_not_silently_dropped() {
    let bytes = cat(&[file("a.txt", b"1"), end(), b"trailing garbage after the marker".to_vec()]);
    let mut tar = TarReader::new(Cursor::new(&bytes));
    tar.next_member().expect("ok").expect("a");
    let err = tar.next_member().expect_err("junk after the marker");
    assert_eq!(err.kind, ErrorKind::Format);
    assert_eq!(err.offset, 1024 + 1024);
    assert!(err.message.contains("after the end-of-archive marker"), "{}", err.message);
}

#[test]
fn concatenated_archives_are_read_whole_like_tar_ignore_zeros() {
    let bytes = cat(&[file("a.txt", b"1"), end(), file("b.txt", b"22"), end()]);
    let got = read_all(&bytes).expect("both archives");
    assert_eq!(names(&got), ["a.txt", "b.txt"]);
}

#[test]
fn a_single_zero_block_ends_the_archive_like_tarfile() {
    let mut bytes = file("a.txt", b"1");
    bytes.extend([0u8; 512]);
    let got = read_all(&bytes).expect("one zero block is an end marker");
    assert_eq!(names(&got), ["a.txt"]);
}

#[test]
fn empty_archive_with_only_the_marker() {
    assert!(read_all(&end()).expect("empty archive").is_empty());
}

#[test]
fn empty_stream_is_truncated_at_offset_zero() {
    let e = expect_err(&[]);
    assert_eq!(e.kind, ErrorKind::Truncated);
    assert_eq!(e.offset, 0);
    assert!(e.message.contains("empty"), "{}", e.message);
}

#[test]
fn short_reads_and_interrupted_reads_change_nothing() {
    let bytes = cat(&[
        pax(b'x', &[("path", b"dir/long.name.txt")]),
        file("ignored", b"pax named"),
        gnu_long(b'L', &"g".repeat(150)),
        file("x", &data_of(513, 3)),
        file("c.bin", &data_of(1, 9)),
        end(),
    ]);
    let want = read_all(&bytes).expect("parse");
    assert_eq!(want.len(), 3);
    for n in [1, 2, 7, 100, 511, 513] {
        let got = read_all_from(Trickle { inner: Cursor::new(&bytes), n }).expect("trickle");
        assert_eq!(got, want, "reads of {n}");
    }
    let got = read_all_from(Interrupting { inner: Cursor::new(&bytes), flip: false }).expect("interrupted");
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------------------
// Names: ustar prefix, GNU long names, pax
// ---------------------------------------------------------------------------------------------------------

#[test]
fn ustar_prefix_written_by_the_tar_crate_is_joined() {
    let dir = "d".repeat(120);
    let name = format!("{dir}/sample0001.input.png");
    let bytes = tar_crate_archive(&[(tar::Header::new_ustar(), &name, b"png".to_vec())]);
    // The tar crate splits the path into prefix and name for ustar: check that is what it did.
    assert_eq!(&bytes[257..263], b"ustar\0");
    assert_ne!(bytes[345], 0, "the prefix field is used");
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), [name.as_str()]);
    assert_eq!(got[0].1, b"png");
}

#[test]
fn ustar_prefix_joins_with_posix_magic_but_not_with_gnu_magic() {
    for (magic, want) in [(POSIX_MAGIC, "some/prefix/name.txt"), (GNU_MAGIC, "name.txt")] {
        let mut h = raw_header(b"name.txt", 2, b'0', magic);
        h[345..356].copy_from_slice(b"some/prefix");
        seal(&mut h);
        let bytes = cat(&[entry(h, b"hi"), end()]);
        let got = read_all(&bytes).expect("parse");
        assert_eq!(names(&got), [want], "magic {magic:?}");
    }
}

#[test]
fn ustar_empty_prefix_adds_no_slash_and_full_100_byte_name_is_kept() {
    let long = format!("{}.txt", "n".repeat(96));
    assert_eq!(long.len(), 100);
    let mut h = raw_header(long.as_bytes(), 1, b'0', POSIX_MAGIC);
    seal(&mut h);
    let bytes = cat(&[entry(h, b"z"), end()]);
    assert_eq!(names(&read_all(&bytes).expect("parse")), [long.as_str()]);
}

#[test]
fn gnu_long_names_from_the_tar_crate() {
    let long = format!("{}/{}.image.jpg", "dir".repeat(40), "k".repeat(80));
    let short = "short.cls".to_string();
    let bytes = tar_crate_archive(&[
        (tar::Header::new_gnu(), &long, data_of(600, 1)),
        (tar::Header::new_gnu(), &short, b"7".to_vec()),
    ]);
    assert_eq!(bytes[156], b'L', "the tar crate wrote a GNU long-name record");
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), [long.as_str(), short.as_str()]);
    assert_eq!(got[0].1, data_of(600, 1));
    // A member's offset is that of its first header, the long-name record.
    assert_eq!(got[0].0.offset, 0);
    let long_record = 512 + padded(long.len() as u64 + 1);
    assert_eq!(got[1].0.offset, long_record + 512 + 1024);
}

#[test]
fn gnu_long_names_by_hand_with_long_links_skipped() {
    let long_file = format!("{}.txt", "f".repeat(300));
    let bytes = cat(&[
        gnu_long(b'K', &"t".repeat(200)),
        gnu_long(b'L', &"l".repeat(200)),
        entry(header("short-link-name", 0, b'2'), b""),
        gnu_long(b'L', &long_file),
        file("truncated-name.txt", b"data"),
        file("plain.txt", b"p"),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), [long_file.as_str(), "plain.txt"]);
    assert_eq!(got[0].1, b"data");
}

#[test]
fn long_name_does_not_leak_past_its_member() {
    let bytes = cat(&[gnu_long(b'L', "long.one.txt"), file("x", b"1"), file("next.txt", b"2"), end()]);
    assert_eq!(names(&read_all(&bytes).expect("parse")), ["long.one.txt", "next.txt"]);
}

#[test]
fn pax_path_override() {
    let path = format!("{}/ünïcödé.sample.json", "p".repeat(200));
    let bytes = cat(&[pax(b'x', &[("path", path.as_bytes())]), file("PaxHeaders/short", b"{}"), end()]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), [path.as_str()]);
    assert_eq!(got[0].0.offset, 0, "offset is that of the pax header");
    assert_eq!(got[0].1, b"{}");
}

#[test]
fn pax_path_written_through_the_tar_crate_is_read_by_it_too() {
    // The tar crate as an oracle: it honours pax `path` on read.
    let path = format!("{}/deep.name.cls", "q".repeat(180));
    let mut b = tar::Builder::new(Vec::new());
    let payload = pax_record("path", path.as_bytes());
    let mut xh = tar::Header::new_ustar();
    xh.set_entry_type(tar::EntryType::XHeader);
    xh.set_size(payload.len() as u64);
    xh.set_path("PaxHeaders/x").expect("path");
    xh.set_cksum();
    b.append(&xh, payload.as_slice()).expect("x");
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "short.cls", &b"abc"[..]).expect("file");
    let bytes = b.into_inner().expect("finish");

    let mut oracle = tar::Archive::new(Cursor::new(&bytes));
    let oracle_names: Vec<String> = oracle
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned())
        .collect();
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), oracle_names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(names(&got), [path.as_str()]);
}

#[test]
fn pax_size_override_beats_the_header_size() {
    // The header says 0 bytes (as writers do when the size does not fit), pax says 700.
    let data = data_of(700, 5);
    let mut bytes = pax(b'x', &[("size", b"700")]);
    bytes.extend(entry(header("big.bin", 0, b'0'), &data));
    bytes.extend(file("after.txt", b"after"));
    bytes.extend(end());
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["big.bin", "after.txt"]);
    assert_eq!(got[0].0.size, 700);
    assert_eq!(got[0].1, data);
    assert_eq!(got[1].1, b"after");
    // And when only skipping, the pax size keeps the stream aligned too.
    assert_eq!(headers_only(&bytes).expect("skip").len(), 2);
}

#[test]
fn pax_path_and_size_together_with_other_records() {
    let data = data_of(1025, 2);
    let bytes = cat(&[
        pax(
            b'x',
            &[
                ("mtime", b"1700000000.123456789"),
                ("path", b"a/b=c.d.e"),
                ("uname", b"someone"),
                ("size", b"1025"),
                ("SCHILY.xattr.user.k", b"v=1\n2"),
            ],
        ),
        entry(header("ignored.name", 1, b'0'), &data),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["a/b=c.d.e"]);
    assert_eq!(got[0].1, data);
}

#[test]
fn pax_path_wins_over_gnu_long_name() {
    let bytes =
        cat(&[gnu_long(b'L', "from.gnu.txt"), pax(b'x', &[("path", b"from.pax.txt")]), file("hdr.txt", b"1"), end()]);
    assert_eq!(names(&read_all(&bytes).expect("parse")), ["from.pax.txt"]);
    let bytes =
        cat(&[pax(b'x', &[("path", b"from.pax.txt")]), gnu_long(b'L', "from.gnu.txt"), file("hdr.txt", b"1"), end()]);
    assert_eq!(names(&read_all(&bytes).expect("parse")), ["from.pax.txt"]);
}

#[test]
fn later_pax_records_override_earlier_ones() {
    let bytes =
        cat(&[pax(b'x', &[("path", b"first.txt")]), pax(b'x', &[("path", b"second.txt")]), file("h.txt", b"1"), end()]);
    assert_eq!(names(&read_all(&bytes).expect("parse")), ["second.txt"]);
}

#[test]
fn global_pax_records_are_ignored() {
    let bytes = cat(&[
        pax(b'g', &[("path", b"global.txt"), ("size", b"9999")]),
        file("a.txt", b"A"),
        pax(b'g', &[("comment", b"x")]),
        file("b.txt", b"B"),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["a.txt", "b.txt"]);
    assert_eq!(got[0].1, b"A");
}

#[test]
fn pax_records_apply_to_the_next_header_only() {
    let bytes = cat(&[
        pax(b'x', &[("path", b"renamed.txt"), ("size", b"3")]),
        entry(header("orig.txt", 0, b'0'), b"abc"),
        file("plain.txt", b"p"),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["renamed.txt", "plain.txt"]);
    assert_eq!(got[1].0.size, 1);
}

#[test]
fn pax_state_does_not_leak_past_a_skipped_directory() {
    let bytes = cat(&[
        pax(b'x', &[("path", b"dir/with/long/name/"), ("size", b"0")]),
        entry(header("dir/", 0, b'5'), b""),
        file("b.txt", b"B"),
        gnu_long(b'L', "link.long.name"),
        entry(header("ln", 0, b'2'), b""),
        file("c.txt", b"C"),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["b.txt", "c.txt"]);
    assert_eq!(got[0].0.offset, 1024 + 512, "offset is that of the file's own header, after the directory");
}

#[test]
fn parse_pax_records() {
    let mut payload = pax_record("path", "naïve/ä.txt".as_bytes());
    payload.extend(pax_record("size", b"12345678901"));
    payload.extend(pax_record("linkpath", b"x"));
    payload.extend(pax_record("comment", b"has = and\nnewline"));
    assert_eq!(parse_pax(&payload), Ok((Some("naïve/ä.txt".to_string()), Some(12_345_678_901))));
    assert_eq!(parse_pax(b""), Ok((None, None)));
    assert_eq!(parse_pax(&pax_record("mtime", b"1.5")), Ok((None, None)));
    // An empty value is kept as an empty path (it is no member name either way).
    assert_eq!(parse_pax(&pax_record("path", b"")), Ok((Some(String::new()), None)));
    // NUL padding after the records is tolerated.
    let mut padded_payload = pax_record("path", b"p.txt");
    padded_payload.extend([0u8; 20]);
    assert_eq!(parse_pax(&padded_payload), Ok((Some("p.txt".to_string()), None)));
    // The last record wins.
    let twice = [pax_record("path", b"a.txt"), pax_record("path", b"b.txt")].concat();
    assert_eq!(parse_pax(&twice), Ok((Some("b.txt".to_string()), None)));
}

#[test]
fn parse_pax_rejects_malformed_records() {
    let bad: &[&[u8]] = &[
        b"no length here",
        b"x path=a\n",
        b"12 path=a.txt",   // no newline (and short)
        b"13 path=a.txt ",  // does not end with a newline
        b"99 path=a.txt\n", // longer than the payload
        b"3 a\n",           // length covers less than the record
        b"11 patha.t\n",    // no '='
        b"11 size=x1\n",    // not a number
        b"12 size=-12\n",   // negative
        b"0 \n",
        b"-5 path=\n",
    ];
    for payload in bad {
        assert!(parse_pax(payload).is_err(), "{:?} was accepted", String::from_utf8_lossy(payload));
    }
}

#[test]
fn malformed_pax_payload_is_a_format_error_at_the_pax_header() {
    let payload = b"17 path=bad.txt\n".to_vec(); // declares 17, holds 16
    let bytes = cat(&[
        file("ok.txt", b"fine"),
        entry(header("././@PaxHeader", payload.len() as u64, b'x'), &payload),
        file("x.txt", b"1"),
        end(),
    ]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 1024);
}

#[test]
fn pax_size_that_is_not_a_number_is_a_format_error() {
    let bytes = cat(&[pax(b'x', &[("size", b"12abc")]), file("x.txt", b"1"), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 0);
}

#[test]
fn oversized_extended_header_is_a_format_error_not_an_allocation() {
    for typeflag in [b'x', b'g', b'L', b'K'] {
        let mut bytes = header("././@LongLink", 1 << 30, typeflag).to_vec();
        bytes.extend(end());
        let e = expect_err(&bytes);
        assert_eq!(e.kind, ErrorKind::Format, "typeflag {}", typeflag as char);
        assert_eq!(e.offset, 0);
    }
}

#[test]
fn end_marker_right_after_an_extended_header_is_a_format_error() {
    for ext in [pax(b'x', &[("path", b"a.txt")]), gnu_long(b'L', "a.txt")] {
        let bytes = cat(&[file("first.txt", b"1"), ext, end()]);
        let e = expect_err(&bytes);
        assert_eq!(e.kind, ErrorKind::Format, "{}", e.message);
        assert_eq!(e.offset, 1024, "offset of the extended header");
    }
}

#[test]
fn stream_ending_after_an_extended_header_is_truncated() {
    let bytes = cat(&[file("first.txt", b"1"), pax(b'x', &[("path", b"a.txt")])]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Truncated);
    assert_eq!(e.offset, bytes.len() as u64);
    assert!(e.message.contains("extended header"), "{}", e.message);
}

// ---------------------------------------------------------------------------------------------------------
// Entry types
// ---------------------------------------------------------------------------------------------------------

#[test]
fn only_regular_files_are_members() {
    let bytes = cat(&[
        entry(header("dir/", 0, b'5'), b""),
        file("dir/a.txt", b"a"),
        entry(header("dir/old-style-dir/", 0, 0), b""),
        entry(header("old.txt", 3, 0), b"old"),
        entry(header("contig.txt", 2, b'7'), b"cc"),
        {
            let mut h = raw_header(b"hard.txt", 0, b'1', POSIX_MAGIC);
            h[157..164].copy_from_slice(b"old.txt");
            seal(&mut h);
            entry(h, b"")
        },
        entry(header("sym.txt", 0, b'2'), b""),
        entry(header("chr", 0, b'3'), b""),
        entry(header("blk", 0, b'4'), b""),
        entry(header("fifo", 0, b'6'), b""),
        // A GNU dumpdir carries data, which is skipped.
        entry(header("dumpdir/", 600, b'D'), &data_of(600, 0)),
        // A directory's size is ignored, as tarfile and GNU tar ignore it: the next header follows at once.
        header("weird-dir/", 10, b'5').to_vec(),
        header("sized-link", 700, b'2').to_vec(),
        entry(header("vendor.ext", 4, b'A'), b"vend"),
        file("last.txt", b"z"),
        end(),
    ]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["dir/a.txt", "old.txt", "contig.txt", "last.txt"]);
    assert_eq!(got[1].1, b"old");
    assert_eq!(got[2].1, b"cc");
    assert_eq!(got[3].1, b"z");
}

#[test]
fn directories_and_links_from_the_tar_crate_are_skipped() {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    b.append_data(&mut dir, "shard/", std::io::empty()).expect("dir");
    let mut f = tar::Header::new_gnu();
    f.set_size(4);
    f.set_mode(0o644);
    b.append_data(&mut f, "shard/x.cls", &b"1234"[..]).expect("file");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, "shard/y.cls", "x.cls").expect("symlink");
    let mut long_link = tar::Header::new_gnu();
    long_link.set_entry_type(tar::EntryType::Link);
    long_link.set_size(0);
    b.append_link(&mut long_link, format!("shard/{}.cls", "z".repeat(120)), format!("{}.cls", "t".repeat(150)))
        .expect("hard link with long names");
    let mut g = tar::Header::new_gnu();
    g.set_size(1);
    g.set_mode(0o644);
    b.append_data(&mut g, "shard/w.cls", &b"9"[..]).expect("file");
    let bytes = b.into_inner().expect("finish");
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["shard/x.cls", "shard/w.cls"]);
    assert_eq!(got[1].1, b"9");
}

#[test]
fn gnu_sparse_members_are_rejected() {
    let bytes = cat(&[file("a.txt", b"1"), entry(header("sparse.bin", 0, b'S'), b""), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 1024);
    assert_eq!(e.member.as_deref(), Some("sparse.bin"));
}

// ---------------------------------------------------------------------------------------------------------
// Numbers and checksums
// ---------------------------------------------------------------------------------------------------------

#[test]
fn parse_number_octal_forms() {
    assert_eq!(parse_number(b"00000001750\0"), Ok(1000));
    assert_eq!(parse_number(b"     1750 \0\0"), Ok(1000));
    assert_eq!(parse_number(b"1750\0\0\0\0\0\0\0\0"), Ok(1000));
    assert_eq!(parse_number(b"0000644 "), Ok(0o644));
    assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Ok(0));
    assert_eq!(parse_number(b"            "), Ok(0));
    assert_eq!(parse_number(b""), Ok(0));
    assert_eq!(parse_number(b"77777777777\0"), Ok(0o77_777_777_777));
    assert_eq!(parse_number(b"777777777777"), Ok(0o777_777_777_777));
    // Text after a NUL is ignored, as by tarfile's nti().
    assert_eq!(parse_number(b"12\0garbage\0\0"), Ok(0o12));
}

#[test]
fn parse_number_rejects_non_octal_text() {
    for field in [&b"0000000008\0\0"[..], b"12a\0", b"1 2\0", b"-12\0", b"0x12\0", b"1\xa9\0"] {
        assert!(parse_number(field).is_err(), "{field:?} was accepted");
    }
}

#[test]
fn parse_number_base_256() {
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[11] = 5;
    assert_eq!(parse_number(&field), Ok(5));
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[4..12].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(parse_number(&field), Ok(1 << 40));
    // The low bits of the first byte are the most significant ones.
    let mut field = [0u8; 8];
    field[0] = 0x81;
    assert_eq!(parse_number(&field), Ok(1 << 56));
    // u64::MAX fits exactly; one bit more does not.
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[4..12].copy_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(parse_number(&field), Ok(u64::MAX));
    field[3] = 1;
    assert!(parse_number(&field).is_err(), "overflow accepted");
    // Negative numbers (0xff lead byte) are refused.
    let field = [0xffu8; 12];
    assert!(parse_number(&field).is_err());
}

#[test]
fn parse_number_agrees_with_the_tar_crate() {
    for value in [0u64, 1, 511, 512, 513, 0o77_777_777_777, 8_589_934_591, 8_589_934_592, 1 << 40, (1 << 62) + 3] {
        let mut h = tar::Header::new_gnu();
        h.set_size(value);
        assert_eq!(parse_number(&h.as_bytes()[124..136]), Ok(value), "{value}");
        assert_eq!(h.entry_size().expect("tar crate reads it"), value);
    }
}

#[test]
fn base_256_size_in_a_header() {
    let data = data_of(777, 4);
    let mut h = raw_header(b"b256.bin", 0, b'0', GNU_MAGIC);
    h[124..136].fill(0);
    h[124] = 0x80;
    h[134..136].copy_from_slice(&777u16.to_be_bytes());
    seal(&mut h);
    let bytes = cat(&[entry(h, &data), file("next.txt", b"n"), end()]);
    let got = read_all(&bytes).expect("parse");
    assert_eq!(names(&got), ["b256.bin", "next.txt"]);
    assert_eq!(got[0].0.size, 777);
    assert_eq!(got[0].1, data);
}

#[test]
fn huge_declared_size_in_a_short_stream_is_truncated_without_allocating_it() {
    // 2^40 bytes declared in base-256 (the tar crate picks base-256 for GNU headers this large).
    let mut h = tar::Header::new_gnu();
    h.set_path("huge.bin").expect("path");
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    assert!(h.as_bytes()[124] & 0x80 != 0);
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend(data_of(1000, 0));
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Truncated);
    assert_eq!(e.offset, bytes.len() as u64);
    assert_eq!(e.member.as_deref(), Some("huge.bin"));
    // The same through a pax size override.
    let mut bytes = pax(b'x', &[("size", b"1099511627776")]);
    bytes.extend(header("huge2.bin", 0, b'0'));
    bytes.extend(data_of(1000, 0));
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Truncated);
    assert_eq!(e.member.as_deref(), Some("huge2.bin"));
}

#[test]
fn negative_base_256_size_is_a_format_error() {
    let mut h = raw_header(b"neg.bin", 0, b'0', GNU_MAGIC);
    h[124..136].fill(0xff);
    seal(&mut h);
    let bytes = cat(&[file("a.txt", b"1"), h.to_vec(), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 1024);
}

#[test]
fn bad_octal_size_is_a_format_error() {
    let mut h = raw_header(b"bad.bin", 0, b'0', POSIX_MAGIC);
    h[124..136].copy_from_slice(b"0000000009x\0");
    seal(&mut h);
    let bytes = cat(&[h.to_vec(), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("size"), "{}", e.message);
}

#[test]
fn checksum_field_variants_are_accepted() {
    // tar crate (GNU style "%06o\0 "), POSIX style "%07o\0", and leading spaces.
    let base = raw_header(b"c.txt", 1, b'0', POSIX_MAGIC);
    let sum = unsigned_sum(&base);
    for field in [format!("{sum:06o}\0 "), format!("{sum:07o}\0"), format!("  {sum:o} \0"), format!("{sum:o}\0\0\0\0")]
    {
        let mut h = base;
        h[148..156].copy_from_slice(&field.as_bytes()[..8]);
        let bytes = cat(&[entry(h, b"1"), end()]);
        assert_eq!(names(&read_all(&bytes).expect("parse")), ["c.txt"], "checksum field {field:?}");
    }
}

#[test]
fn signed_checksum_is_accepted() {
    // High bytes in the name make the signed and unsigned sums differ.
    let name = "é€.txt";
    let mut h = raw_header(name.as_bytes(), 3, b'0', POSIX_MAGIC);
    let signed = signed_sum(&h);
    assert_ne!(signed as u64, unsigned_sum(&h));
    assert!(signed > 0);
    put_checksum(&mut h, signed as u64);
    let bytes = cat(&[entry(h, b"abc"), end()]);
    let got = read_all(&bytes).expect("signed checksum");
    assert_eq!(names(&got), [name]);
}

#[test]
fn bad_checksum_is_rejected_at_its_header() {
    let mut bad = header("b.txt", 1, b'0');
    bad[0] = b'c'; // the name changed after the checksum was computed
    let bytes = cat(&[file("a.txt", &data_of(600, 0)), entry(bad, b"1"), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 512 + 1024);
    assert!(e.message.contains("checksum"), "{}", e.message);
    // Off by one in either direction.
    for delta in [1i64, -1] {
        let mut h = raw_header(b"d.txt", 0, b'0', POSIX_MAGIC);
        let wrong = (unsigned_sum(&h) as i64 + delta) as u64;
        put_checksum(&mut h, wrong);
        let e = expect_err(&cat(&[h.to_vec(), end()]));
        assert_eq!(e.kind, ErrorKind::Format);
        assert_eq!(e.offset, 0);
    }
}

#[test]
fn bad_checksum_in_an_extended_header_is_rejected() {
    let mut x = pax(b'x', &[("path", b"p.txt")]);
    x[10] ^= 1;
    let bytes = cat(&[file("a.txt", b"a"), x, file("h.txt", b"1"), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 1024);
}

#[test]
fn non_tar_bytes_are_a_format_error() {
    let mut bytes = b"this is plainly not a tar archive, just text\n".repeat(30);
    bytes.truncate(1024);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, ErrorKind::Format);
    assert_eq!(e.offset, 0);
    // A missing checksum field (all NULs) is no checksum.
    let mut h = raw_header(b"a.txt", 0, b'0', POSIX_MAGIC);
    h[148..156].fill(0);
    assert_eq!(expect_err(&cat(&[h.to_vec(), end()])).kind, ErrorKind::Format);
}

// ---------------------------------------------------------------------------------------------------------
// Truncation
// ---------------------------------------------------------------------------------------------------------

/// A small archive that exercises every kind of record, with the offset of its end marker.
fn mixed_archive() -> (Vec<u8>, usize) {
    let parts = vec![
        pax(b'g', &[("comment", b"global")]),
        pax(b'x', &[("path", b"pax/named.member.txt"), ("size", b"5")]),
        entry(header("hdr-name", 0, b'0'), b"fives"),
        gnu_long(b'L', &format!("{}.long.bin", "L".repeat(120))),
        file("cut", &data_of(513, 1)),
        entry(header("d/", 0, b'5'), b""),
        entry(header("s", 0, b'2'), b""),
        file("zero.bin", b""),
        file("one.bin", b"1"),
        file("b511.bin", &data_of(511, 2)),
        file("b512.bin", &data_of(512, 3)),
        file("b513.bin", &data_of(513, 4)),
    ];
    let body = cat(&parts);
    let marker = body.len();
    (cat(&[body, end()]), marker)
}

#[test]
fn the_mixed_archive_reads_whole() {
    let (bytes, marker) = mixed_archive();
    let got = read_all(&bytes).expect("parse");
    assert_eq!(got.len(), 7);
    assert_eq!(got[0].0.name, "pax/named.member.txt");
    assert_eq!(got[0].1, b"fives");
    assert!(got[1].0.name.ends_with(".long.bin"));
    assert_eq!(names(&got)[2..], ["zero.bin", "one.bin", "b511.bin", "b512.bin", "b513.bin"]);
    // The stream may end anywhere after the first zero block.
    for cut in marker + 512..=bytes.len() {
        assert_eq!(read_all(&bytes[..cut]).expect("end marker seen"), got, "cut at {cut}");
    }
}

/// Cutting a stream anywhere before its end marker (inclusive of a partial first zero block) must be an
/// error of kind Truncated at an offset no later than the cut, never Ok and never a panic.
fn check_every_cut(bytes: &[u8], marker: usize, read: impl Fn(&[u8]) -> Result<usize, TarError>) {
    for cut in 0..marker + 512 {
        match read(&bytes[..cut]) {
            Ok(n) => panic!("cut at {cut} of {}: Ok with {n} members", bytes.len()),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Truncated, "cut at {cut}: {e:?}");
                assert!(e.offset <= cut as u64, "cut at {cut}: offset {} is past the cut", e.offset);
            }
        }
    }
}

#[test]
fn cut_at_every_byte_reading_data() {
    let (bytes, marker) = mixed_archive();
    check_every_cut(&bytes, marker, |b| read_all(b).map(|m| m.len()));
}

#[test]
fn cut_at_every_byte_skipping_data() {
    let (bytes, marker) = mixed_archive();
    check_every_cut(&bytes, marker, |b| headers_only(b).map(|m| m.len()));
}

#[test]
fn cut_at_every_byte_with_short_reads() {
    let (bytes, marker) = mixed_archive();
    check_every_cut(&bytes, marker, |b| read_all_from(Trickle { inner: Cursor::new(b), n: 97 }).map(|m| m.len()));
}

#[test]
fn cut_points_report_the_exact_offset_and_member() {
    let a = data_of(700, 1);
    let bytes = cat(&[file("a.bin", &a), file("b.bin", b"bb"), end()]);
    // (cut, expected offset, expected member, words in the message)
    let cases: &[(usize, u64, Option<&str>, &str)] = &[
        (0, 0, None, "empty"),
        (100, 100, None, "inside a header"),
        (511, 511, None, "inside a header"),
        (512, 512, Some("a.bin"), "inside member data"),
        (512 + 699, 512 + 699, Some("a.bin"), "inside member data"),
        (512 + 700, 512 + 700, Some("a.bin"), "padding"), // all data, no padding
        (512 + 1000, 512 + 1000, Some("a.bin"), "padding"), // inside the padding
        (1536, 1536, None, "member boundary"),
        (1536 + 300, 1536 + 300, None, "inside a header"),
        (2048 + 1, 2048 + 1, Some("b.bin"), "inside member data"),
        (2048 + 2, 2048 + 2, Some("b.bin"), "padding"),
        (2560, 2560, None, "member boundary"),             // no end marker at all
        (2560 + 511, 2560 + 511, None, "inside a header"), // a partial zero block
    ];
    for &(cut, offset, member, words) in cases {
        let e = expect_err(&bytes[..cut]);
        assert_eq!(e.kind, ErrorKind::Truncated, "cut {cut}");
        assert_eq!(e.offset, offset, "cut {cut}: {}", e.message);
        assert_eq!(e.member.as_deref(), member, "cut {cut}");
        assert!(e.message.contains(words), "cut {cut}: {:?} lacks {words:?}", e.message);
    }
}

#[test]
fn members_before_a_cut_are_read_whole() {
    let bytes = cat(&[file("a.txt", b"first"), file("b.txt", &data_of(2000, 0)), end()]);
    let mut tar = TarReader::new(Cursor::new(&bytes[..1024 + 512 + 1000]));
    let a = tar.next_member().expect("ok").expect("a");
    let mut data = Vec::new();
    tar.read_data(&a, &mut data).expect("a is whole");
    assert_eq!(data, b"first");
    let b = tar.next_member().expect("ok").expect("b");
    let e = tar.read_data(&b, &mut data).expect_err("b is cut");
    assert_eq!(e.kind, ErrorKind::Truncated);
    assert_eq!(e.offset, 2536);
    assert!(e.message.contains("1000 of 2000"), "{}", e.message);
}

#[test]
fn inner_read_errors_keep_their_kind() {
    let bytes = cat(&[file("a.txt", &data_of(600, 0)), file("b.txt", b"b"), end()]);
    // UnexpectedEof from a decompressor is a truncation; other errors are read errors. Fail in a header, in
    // data and in padding.
    for cut in [300usize, 700, 1200, 1536] {
        for (kind, want) in
            [(io::ErrorKind::UnexpectedEof, ErrorKind::Truncated), (io::ErrorKind::Other, ErrorKind::Read)]
        {
            let r = FailAfter { bytes: Cursor::new(bytes[..cut].to_vec()), kind };
            match read_all_from(r) {
                Ok(_) => panic!("cut {cut}: Ok"),
                Err(e) => {
                    assert_eq!(e.kind, want, "cut {cut} {kind:?}: {e:?}");
                    assert!(e.offset <= cut as u64);
                }
            }
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn read_all_decompressed(compressed: &[u8]) -> Result<usize, TarError> {
    let (stream, _) = crate::decompress::decompress(Box::new(Cursor::new(compressed.to_vec())))
        .map_err(|e| TarError::io(0, None, &e))?;
    read_all_from(stream).map(|m| m.len())
}

#[test]
fn cut_at_every_byte_of_a_gzip_stream() {
    let (bytes, _) = mixed_archive();
    let gz = gzip(&bytes);
    assert_eq!(read_all_decompressed(&gz).expect("whole gzip"), 7);
    // Every cut loses at least the gzip trailer; cuts that keep the whole tar (end marker included) are fine
    // for the parser, which stops at the marker; the reader then drains the rest and sees the bad trailer.
    let mut errors = 0;
    for cut in 0..gz.len() {
        match read_all_decompressed(&gz[..cut]) {
            Ok(n) => assert_eq!(n, 7, "cut {cut}"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Truncated, "cut {cut} of {}: {e:?}", gz.len());
                errors += 1;
            }
        }
    }
    assert!(errors > gz.len() / 2, "only {errors} of {} cuts failed", gz.len());
}

#[test]
fn gzip_cut_inside_a_member_of_two_concatenated_members() {
    let (bytes, _) = mixed_archive();
    let half = bytes.len() / 2 + 17; // not on a block boundary
    let mut gz = gzip(&bytes[..half]);
    let first = gz.len();
    gz.extend(gzip(&bytes[half..]));
    assert_eq!(read_all_decompressed(&gz).expect("multi-member gzip"), 7);
    for cut in [first / 2, first - 4, first, first + 10] {
        let e = read_all_decompressed(&gz[..cut]).expect_err("cut");
        assert_eq!(e.kind, ErrorKind::Truncated, "cut {cut}: {e:?}");
    }
}

#[test]
fn read_data_into_fills_the_buffer_and_reports_a_cut_member() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let bytes = cat(&[file("big.bin", &payload), file("next.txt", b"x"), end()]);
    let mut tar = TarReader::new(Cursor::new(&bytes));
    let h = tar.next_member().expect("ok").expect("big");
    let mut buf = vec![0u8; h.size as usize];
    tar.read_data_into(&h, &mut buf).expect("whole member");
    assert_eq!(buf, payload);
    assert_eq!(tar.next_member().expect("ok").expect("next").name, "next.txt");

    let cut = &bytes[..512 + 3000];
    let mut tar = TarReader::new(Cursor::new(cut));
    let h = tar.next_member().expect("ok").expect("big");
    let mut buf = vec![0u8; h.size as usize];
    let err = tar.read_data_into(&h, &mut buf).expect_err("cut inside the member");
    assert_eq!(err.kind, ErrorKind::Truncated);
    assert_eq!(err.member.as_deref(), Some("big.bin"));
    assert_eq!(err.offset, 512 + 3000);
}

// ---------------------------------------------------------------------------------------------------------
// Member info (mode, owner, time)
// ---------------------------------------------------------------------------------------------------------

/// The info of each regular member, in order.
fn infos(bytes: &[u8]) -> Vec<MemberInfo> {
    let mut tar = TarReader::new(Cursor::new(bytes.to_vec()));
    let mut out = Vec::new();
    while tar.next_member().unwrap().is_some() {
        out.push(tar.member_info());
        tar.skip_data().unwrap();
    }
    out
}

#[test]
fn member_info_comes_from_the_header_and_pax_records_override_it() {
    let mut h = header("a.txt", 1, b'0');
    put_octal(&mut h[100..108], 0o100640); // a file type in the mode field is dropped
    put_octal(&mut h[108..116], 1234);
    put_octal(&mut h[116..124], 99);
    put_octal(&mut h[136..148], 1_700_000_000);
    h[265..270].copy_from_slice(b"alice");
    h[297..302].copy_from_slice(b"staff");
    seal(&mut h);
    let plain = entry(h, b"x");
    let records: [(&str, &[u8]); 4] =
        [("uid", b"10000000000"), ("uname", "b\u{f8}b".as_bytes()), ("mtime", b"1700000000.75"), ("gid", b"x")];
    let overridden = cat(&[pax(b'x', &records), plain.clone()]);
    let got = infos(&cat(&[plain, overridden, file("b.txt", b"y"), end()]));
    let alice = MemberInfo {
        mode: 0o640,
        uid: 1234,
        gid: 99,
        uname: "alice".into(),
        gname: "staff".into(),
        mtime: 1_700_000_000,
    };
    assert_eq!(got[0], alice);
    // pax values win where they parse; a bad one (gid) leaves the header's.
    assert_eq!(got[1], MemberInfo { uid: 10_000_000_000, uname: "b\u{f8}b".into(), ..alice.clone() });
    // The pax records belong to one member only.
    assert_eq!((got[2].uid, got[2].uname.as_str(), got[2].mode), (0, "", 0o644));
}

#[test]
fn a_directory_followed_by_data_it_declared_is_a_format_error_at_that_data() {
    let bytes = cat(&[entry(header("weird-dir/", 10, b'5'), &[b'A'; 10]), file("a.txt", b"a"), end()]);
    let e = expect_err(&bytes);
    assert_eq!(e.kind, crate::error::ErrorKind::Format);
    assert_eq!(e.offset, 512, "the block after the directory's header");
}

#[test]
fn endless_zero_blocks_after_the_marker_end_the_archive_without_reading_on() {
    // An endless stream of zeros: the archive ends after a bounded run, with the rest left unread.
    let mut bytes = cat(&[file("a.txt", b"a")]);
    bytes.extend(std::iter::repeat_n(0u8, 512 * (MAX_ZERO_RUN as usize + 10)));
    let mut tar = TarReader::new(bytes.as_slice());
    let first = tar.next_member().expect("member").expect("a.txt");
    assert_eq!(first.name, "a.txt");
    assert_eq!(tar.next_member().expect("end"), None);
    assert!(tar.ended_early());
    assert!(tar.offset() < bytes.len() as u64, "stopped before the end of the zeros");
    let endless = io::repeat(0).take(u64::MAX);
    let head = cat(&[file("a.txt", b"a")]);
    let mut tar = TarReader::new(head.as_slice().chain(endless));
    assert!(tar.next_member().expect("member").is_some());
    assert_eq!(tar.next_member().expect("end"), None, "an endless stream of zero blocks ends");
}

#[test]
fn zero_padding_shorter_than_the_bound_is_read_to_its_end() {
    let mut bytes = cat(&[file("a.txt", b"a"), end()]);
    bytes.extend(std::iter::repeat_n(0u8, 20 * 512));
    let mut tar = TarReader::new(bytes.as_slice());
    assert!(tar.next_member().expect("member").is_some());
    assert_eq!(tar.next_member().expect("end"), None);
    assert!(!tar.ended_early());
}
