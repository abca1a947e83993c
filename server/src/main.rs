//! The `percore` binary: everything lives in the library so tests and tools share it.

fn main() {
    std::process::exit(percore_server::cli::main());
}
