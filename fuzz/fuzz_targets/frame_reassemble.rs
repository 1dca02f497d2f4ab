//! Fuzz target `frame_reassemble`: the checks are in `shmrpc_fuzz::frame::frame_reassemble` (see src/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmrpc_fuzz::frame::frame_reassemble(data));
