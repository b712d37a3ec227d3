//! Attribute labels: CelebA's `list_attr_celeba.txt`, or a CSV with a `file` column and one column per attribute.
use super::error::DataError;
use std::path::Path;

/// Per file, per attribute: Some(true/false), or None when unlabelled (0 in CelebA-style ±1 files is not used).
pub struct Attributes {
    pub names: Vec<String>,
    pub files: Vec<String>,
    pub values: Vec<Vec<Option<bool>>>,
}

impl Attributes {
    pub fn index(&self, attribute: &str) -> Option<usize> {
        self.names.iter().position(|n| n == attribute)
    }
}

fn parse_value(v: &str) -> Option<Option<bool>> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "+1" | "true" | "yes" => Some(Some(true)),
        "-1" | "false" | "no" => Some(Some(false)),
        "0" => Some(Some(false)),
        "" | "na" | "nan" => Some(None),
        _ => None,
    }
}

/// CelebA format: a count line, a line of attribute names, then `file v1 … vN` with ±1.
pub fn read_celeba(path: &Path) -> Result<Attributes, DataError> {
    let fail = |m: String| DataError::File { path: path.into(), message: m };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut lines = text.lines();
    let _count = lines.next().ok_or_else(|| fail("empty file".into()))?;
    let names: Vec<String> =
        lines.next().ok_or_else(|| fail("no attribute names".into()))?.split_whitespace().map(String::from).collect();
    let mut attrs = Attributes { names, files: vec![], values: vec![] };
    for (i, line) in lines.enumerate() {
        let mut parts = line.split_whitespace();
        let Some(file) = parts.next() else { continue };
        let values: Vec<Option<bool>> = parts
            .map(|v| match v {
                "1" => Ok(Some(true)),
                "-1" => Ok(Some(false)),
                other => Err(fail(format!("line {}: value `{other}` is not ±1", i + 3))),
            })
            .collect::<Result<_, _>>()?;
        if values.len() != attrs.names.len() {
            return Err(fail(format!("line {}: {} values for {} attributes", i + 3, values.len(), attrs.names.len())));
        }
        attrs.files.push(file.to_string());
        attrs.values.push(values);
    }
    Ok(attrs)
}

/// CSV: a header with a `file` column and attribute columns holding ±1, 0/1 or true/false.
pub fn read_csv(path: &Path) -> Result<Attributes, DataError> {
    let fail = |m: String| DataError::File { path: path.into(), message: m };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> =
        lines.next().ok_or_else(|| fail("empty file".into()))?.split(',').map(|s| s.trim().to_string()).collect();
    let file_col = header.iter().position(|h| h == "file").ok_or_else(|| fail("no `file` column".into()))?;
    let names: Vec<String> = header.iter().enumerate().filter(|(i, _)| *i != file_col).map(|(_, h)| h.clone()).collect();
    let mut attrs = Attributes { names, files: vec![], values: vec![] };
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(fail(format!("line {}: {} cells, header has {}", i + 2, cells.len(), header.len())));
        }
        let mut values = Vec::new();
        for (j, cell) in cells.iter().enumerate() {
            if j == file_col {
                continue;
            }
            values.push(parse_value(cell).ok_or_else(|| {
                fail(format!("line {}: `{}` = `{cell}` is not ±1, 0/1 or true/false", i + 2, header[j]))
            })?);
        }
        attrs.files.push(cells[file_col].trim().to_string());
        attrs.values.push(values);
    }
    Ok(attrs)
}

pub fn read_labels(path: &Path) -> Result<Attributes, DataError> {
    if path.extension().and_then(|e| e.to_str()) == Some("csv") {
        read_csv(path)
    } else {
        read_celeba(path)
    }
}
