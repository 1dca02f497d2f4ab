//! Fuzz target `ring_reader`: the checks are in `shmrpc_fuzz::ring::ring_reader` (see src/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmrpc_fuzz::ring::ring_reader(data));
