//! Rebuild the crate when a migration changes: `refinery::embed_migrations!` reads `../migrations` at compile
//! time but does not tell cargo about it, so without this an edited or added migration would not be embedded.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=build.rs");
}
