//! Prints a fuzz input as the target reads it: `cargo run --example show -- <target> <file>`
//! (for `ring_reader` and `frame_reassemble`; the other targets take plain bytes).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file] = &args[..] else {
        eprintln!("usage: show <ring_reader|frame_reassemble> <file>");
        std::process::exit(2);
    };
    let data = std::fs::read(file).expect("readable input");
    match target.as_str() {
        "ring_reader" => println!("{:#?}", shmrpc_fuzz::ring::RingInput::decode(&data)),
        "frame_reassemble" => println!("{:#?}", shmrpc_fuzz::frame::decode_reassemble(&data)),
        _ => println!("{data:02x?}"),
    }
}
