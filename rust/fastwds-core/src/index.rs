//! The bytes of a shard index file, format version 1 (docs/index-format.md): the writers make one per shard
//! as they close it, so encoding is on their path; Python reads indexes back (`fastwds.shardindex`).

/// The first bytes of every index file.
pub const MAGIC: &[u8; 8] = b"\x89WDSIDX\n";
/// The format version written.
pub const VERSION: u8 = 1;
const BLOCK: u64 = 512;

/// An index's content: per sample its key (the reader's, as bytes) and the offset of its first header in the
/// uncompressed tar stream; the offset of the end marker; the shard's stored size and validator.
pub struct IndexContent<'a, K: AsRef<[u8]>> {
    pub keys: &'a [K],
    pub offsets: &'a [u64],
    pub end: u64,
    pub size: u64,
    pub validator: &'a str,
}

/// The index file's bytes, or what makes the content unstorable: key and offset counts that differ, offsets
/// that decrease, are not multiples of 512 or lie past `end`.
pub fn encode_index<K: AsRef<[u8]>>(content: &IndexContent<'_, K>) -> Result<Vec<u8>, String> {
    let IndexContent { keys, offsets, end, size, validator } = *content;
    if keys.len() != offsets.len() {
        return Err(format!("index has {} keys but {} offsets", keys.len(), offsets.len()));
    }
    let mut blocks = Vec::with_capacity(offsets.len() + 1);
    let mut previous = 0u64;
    for &offset in offsets.iter().chain(std::iter::once(&end)) {
        match offset.checked_sub(previous) {
            Some(delta) if delta % BLOCK == 0 => blocks.push(delta / BLOCK),
            _ => {
                return Err(format!(
                    "index offsets must increase by whole 512-byte blocks, from 0 up to the end offset {end}"
                ))
            }
        }
        previous = offset;
    }
    let key_bytes: usize = keys.iter().map(|k| k.as_ref().len()).sum();
    let mut out = Vec::with_capacity(32 + validator.len() + key_bytes + 4 * keys.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(0); // flags: none defined in version 1
    varint(&mut out, size);
    varint(&mut out, validator.len() as u64);
    out.extend_from_slice(validator.as_bytes());
    varint(&mut out, keys.len() as u64);
    // Front coding: each key as the length it shares with the key before it, then the rest.
    let shared: Vec<usize> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| match i {
            0 => 0,
            _ => common_prefix(keys[i - 1].as_ref(), key.as_ref()),
        })
        .collect();
    for &n in &shared {
        varint(&mut out, n as u64);
    }
    for (key, &n) in keys.iter().zip(&shared) {
        varint(&mut out, (key.as_ref().len() - n) as u64);
    }
    for (key, &n) in keys.iter().zip(&shared) {
        out.extend_from_slice(&key.as_ref()[n..]);
    }
    for &b in &blocks {
        varint(&mut out, b);
    }
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    Ok(out)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// LEB128: seven bits a byte, low first, the high bit set on all but the last.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7F) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(keys: &[&str], offsets: &[u64], end: u64) -> Result<Vec<u8>, String> {
        encode_index(&IndexContent { keys, offsets, end, size: 10240, validator: "1700000000000000000" })
    }

    #[test]
    fn the_documented_example() {
        // docs/index-format.md's example: three samples at 0, 2048 and 4096, end 5120.
        let bytes = encode(&["sample000001", "sample000002", "sample000010"], &[0, 2048, 4096], 5120).expect("ok");
        let mut want = MAGIC.to_vec();
        want.extend_from_slice(&[1, 0, 0x80, 0x50, 19]);
        want.extend_from_slice(b"1700000000000000000");
        want.extend_from_slice(&[3, 0, 11, 10, 12, 1, 2]);
        want.extend_from_slice(b"sample000001210");
        want.extend_from_slice(&[0, 4, 4, 2]);
        let checksum = crc32fast::hash(&want);
        want.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(bytes, want);
    }

    #[test]
    fn varints_take_seven_bits_a_byte() {
        let mut out = Vec::new();
        for v in [0, 127, 128, 300, u64::MAX] {
            varint(&mut out, v);
        }
        assert_eq!(&out[..6], &[0, 0x7F, 0x80, 0x01, 0xAC, 0x02]);
        assert_eq!(out.len(), 6 + 10);
    }

    #[test]
    fn unstorable_content_is_refused() {
        assert_eq!(encode(&["a"], &[], 512).unwrap_err(), "index has 1 keys but 0 offsets");
        for (offsets, end) in [(vec![512u64, 0], 1024u64), (vec![0, 100], 1024), (vec![0, 1024], 512)] {
            let e = encode(&["a", "b"], &offsets, end).unwrap_err();
            assert!(e.contains("whole 512-byte blocks"), "{e}");
        }
        assert!(encode(&[], &[], 0).is_ok());
    }
}
