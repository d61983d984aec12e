#![no_main]
// What this target checks: weft_fuzz_checks::net::tls_sni (docs/fuzzing.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_fuzz_checks::net::tls_sni(data));
