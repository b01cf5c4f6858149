//! A trace file as `sluice replay` and `sluice bench` read it, plain or
//! gzipped: a reason for what it cannot use, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = sluice_tools::replay::trace_reader(std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let _ = sluice_tools::replay::check_trace(reader);
});
