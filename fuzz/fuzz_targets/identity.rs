//! AFL++ target: see `fuzz_checks::identity` for what is fed in and what is
//! asserted. Outside afl-fuzz the binary reads one input from stdin, which is
//! how scripts/fuzz.sh replays fuzz/regressions/identity/.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz_checks::identity::check(data));
}
