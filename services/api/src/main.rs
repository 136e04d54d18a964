fn main() {
    std::process::exit(orrery_api::main());
}
