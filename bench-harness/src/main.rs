//! The rjabberd load generator. Not written yet: it is specified by the bench-harness issue and needs the
//! server of the thread-per-core node issue to measure.

fn main() {
    eprintln!("bench-harness: not written yet (see the bench-harness issue); nothing was measured");
    std::process::exit(2);
}
