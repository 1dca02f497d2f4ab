//! Fuzz target `frame_decode`: the checks are in `shmrpc_fuzz::frame::frame_decode` (see src/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmrpc_fuzz::frame::frame_decode(data));
