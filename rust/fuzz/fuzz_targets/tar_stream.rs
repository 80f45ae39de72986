//! Any bytes as a shard: gzip/zstd detection, then every member header and its data. The parser must end
//! with members or an error, never a panic, a hang or an allocation the data does not back.
#![no_main]

use std::io::{Cursor, Read};

use fastwds_core::decompress::decompress;
use fastwds_core::tar::TarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source: Box<dyn Read + Send> = Box::new(Cursor::new(data.to_vec()));
    let Ok((stream, _)) = decompress(source) else { return };
    let mut tar = TarReader::new(stream);
    let mut buf = Vec::new();
    loop {
        match tar.next_member() {
            Ok(Some(header)) => {
                if tar.read_data(&header, &mut buf).is_err() {
                    return;
                }
                assert_eq!(buf.len() as u64, header.size);
            }
            Ok(None) | Err(_) => return,
        }
    }
});
