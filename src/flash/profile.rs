//! Where a firmware step's instructions go: the instruction-counting plugin's per-address
//! counts (`hist=`, instructions executed between the markers around each step) summed by
//! the ELF function that holds each address.

use std::path::Path;

use object::{Object, ObjectSymbol, SymbolKind};

use crate::error::{RecurError, Result};

/// One function's share of the counted steps.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCount {
    /// Demangled name, without the hash (`recur_kernel::arm::gate_rows16`).
    pub function: String,
    /// Instructions executed in it over all counted steps.
    pub instructions: u64,
}

/// Sums the plugin's `"<address in hex> <count>"` lines by the function of `elf` whose
/// range holds each address (addresses outside every function go to `"?"`), most
/// instructions first.
pub fn by_function(elf: &Path, hist: &str) -> Result<Vec<FunctionCount>> {
    let bytes = std::fs::read(elf).map_err(|e| RecurError::file(elf, e))?;
    let file = object::File::parse(&*bytes)
        .map_err(|e| RecurError::file(elf, format!("not an ELF file: {e}")))?;
    // Thumb function symbols carry bit 0 set.
    let mut functions: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let name = format!("{:#}", rustc_demangle::demangle(name));
            Some((s.address() & !1, s.size(), name))
        })
        .collect();
    functions.sort_by_key(|f| f.0);
    let mut sums: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for line in hist.lines() {
        let bad = || RecurError::Usage(format!("internal: bad plugin profile line '{line}'"));
        let (pc, n) = line.split_once(' ').ok_or_else(bad)?;
        let pc = u64::from_str_radix(pc, 16).map_err(|_| bad())?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        let at = functions.partition_point(|f| f.0 <= pc);
        let name = match at.checked_sub(1).map(|i| &functions[i]) {
            Some((start, size, name)) if pc < start + size => name.as_str(),
            _ => "?",
        };
        *sums.entry(name).or_default() += n;
    }
    let mut out: Vec<FunctionCount> = sums
        .into_iter()
        .map(|(function, instructions)| FunctionCount {
            function: function.to_string(),
            instructions,
        })
        .collect();
    out.sort_by(|a, b| {
        b.instructions
            .cmp(&a.instructions)
            .then(a.function.cmp(&b.function))
    });
    Ok(out)
}
