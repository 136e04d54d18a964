fn main() {
    std::process::exit(orrery_scheduler::main());
}
