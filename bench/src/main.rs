//! `percore-bench`: see the library's docs and `percore-bench --help`.

fn main() {
    std::process::exit(percore_bench::main_cli())
}
