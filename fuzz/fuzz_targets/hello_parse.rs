//! Fuzz target `hello_parse`: the checks are in `shmrpc_fuzz::hello::hello_parse` (see src/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmrpc_fuzz::hello::hello_parse(data));
