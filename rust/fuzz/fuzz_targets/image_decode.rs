//! Any bytes as an image (JPEG, PNG or PNM by magic bytes), decoded whole and through a crop: an error or
//! pixels of the promised shape, never a panic or a crash inside libjpeg-turbo.
#![no_main]

use fastwds_core::image::{decode, Crop, DecodeSpec, Mode, Resize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, image)) = data.split_first() else { return };
    let mode = [Mode::Rgb, Mode::L, Mode::Rgba][choice as usize % 3];
    let mut spec = DecodeSpec::new(mode);
    // Keep allocations small: the bomb check runs before any pixel buffer exists.
    spec.max_pixels = 1 << 22;
    check(image, &spec);
    spec.resize = Some(Resize {
        size: (1 + (choice as u32 >> 2) % 40, 7),
        crop: if choice & 0x80 != 0 {
            Crop::Center
        } else {
            Crop::RandomResized { scale: (0.05, 1.0), ratio: (0.75, 1.33) }
        },
    });
    spec.flip = 0.5;
    spec.seed = choice as u64;
    check(image, &spec);
});

fn check(image: &[u8], spec: &DecodeSpec) {
    if let Ok(pixels) = decode(image, spec) {
        assert_eq!(pixels.data.len(), pixels.height * pixels.width * pixels.channels);
        assert_eq!(pixels.channels, spec.mode.channels());
        if let Some(resize) = spec.resize {
            assert_eq!((pixels.height as u32, pixels.width as u32), resize.size);
        }
    }
}
