//! Docker's column tables (`ps`, `stats`, `network ls`): each column as
//! wide as its widest cell, three spaces apart, the last one unpadded.

use std::fmt::Write;

/// The header and rows as Docker lays them out, one line each.
pub fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < N {
                text.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_lines_end_clean() {
        let rows = [
            ["a1".to_string(), "long-name".to_string(), String::new()],
            ["bé".to_string(), "x".to_string(), "last".to_string()],
        ];
        assert_eq!(
            columns(["ID", "NAME", "NOTE"], &rows),
            "ID   NAME        NOTE\na1   long-name\nbé   x           last\n"
        );
    }
}
