fn main() {
    std::process::exit(orrery_worker::main());
}
