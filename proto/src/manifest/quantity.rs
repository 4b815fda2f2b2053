//! Resource quantities as Kubernetes writes them (`"500m"`, `"64Mi"`), and
//! sizes in bytes written the same way (log file limits).

/// Why a string is not a usable CPU or memory quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a CPU quantity (e.g. \"500m\" or \"1.5\")")]
    NotCpu(String),
    #[error("{0:?} is out of range (1m to 1000 cores)")]
    CpuOutOfRange(String),
    #[error("{0:?} is not a memory quantity (e.g. \"64Mi\")")]
    NotMemory(String),
    #[error("{0:?} is not a size in bytes (e.g. \"10Mi\")")]
    NotSize(String),
    /// Below what a cgroup can hold a process in.
    #[error("{0:?} is below the 4096 bytes minimum")]
    MemoryTooSmall(String),
}

/// Parses a CPU quantity: `"500m"` or a number of cores (`"1"`, `"0.5"`).
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError::NotCpu(s.to_string());
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let cores: f64 = s.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 || millis > 1_000_000 {
        return Err(QuantityError::CpuOutOfRange(s.to_string()));
    }
    Ok(millis)
}

/// Parses a memory quantity: a size (see [`parse_size`]) of at least 4096
/// bytes.
pub fn parse_memory(s: &str) -> Result<u64, QuantityError> {
    let bytes = parse_size(s).map_err(|_| QuantityError::NotMemory(s.to_string()))?;
    if bytes < 4096 {
        return Err(QuantityError::MemoryTooSmall(s.to_string()));
    }
    Ok(bytes)
}

/// Parses a size in bytes: a number, or with a `Ki Mi Gi Ti` / `k M G T`
/// suffix.
pub fn parse_size(s: &str) -> Result<u64, QuantityError> {
    let bad = || QuantityError::NotSize(s.to_string());
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}
