fn main() {
    std::process::exit(orrery_cli::main());
}
