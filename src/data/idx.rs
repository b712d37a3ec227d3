//! MNIST / Fashion-MNIST IDX image files (`*-idx3-ubyte`, optionally gzipped).
use super::error::DataError;
use std::io::Read;
use std::path::Path;

/// Returns (count, height, width, pixels).
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let fail = |m: String| DataError::File { path: path.into(), message: m };
    let raw = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| fail(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(fail)
}

pub fn parse(bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>), String> {
    let be = |i: usize| -> Result<usize, String> {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "truncated header".to_string())
    };
    let magic = be(0)?;
    if magic != 0x0803 {
        return Err(format!("not an IDX image file (magic {magic:#x}, expected 0x803: unsigned bytes, 3 dims)"));
    }
    let (n, h, w) = (be(4)?, be(8)?, be(12)?);
    let need = n.checked_mul(h).and_then(|x| x.checked_mul(w)).ok_or("sizes overflow")?;
    let data = bytes.get(16..).unwrap_or(&[]);
    if data.len() < need {
        return Err(format!("truncated: {n}x{h}x{w} needs {need} bytes, found {}", data.len()));
    }
    Ok((n, h, w, data[..need].to_vec()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1];
        b.extend([1, 2, 3, 4]);
        assert_eq!(super::parse(&b).unwrap(), (2, 2, 1, vec![1, 2, 3, 4]));
        assert!(super::parse(&b[..18]).unwrap_err().contains("truncated"));
        b[3] = 1;
        assert!(super::parse(&b).unwrap_err().contains("magic"));
    }
}
