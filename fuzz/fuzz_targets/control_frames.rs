#![no_main]
// What this target checks: weft_fuzz_checks::api::control_frames (docs/fuzzing.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_fuzz_checks::api::control_frames(data));
