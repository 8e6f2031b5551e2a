//! Human-readable output: aligned columns.

/// Formats `rows` under `header` in columns padded to their widest cell, two spaces apart.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// One line of `text`: newlines and tabs become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

/// `secs` as `4.2s`, `3m 12s`, `2h 5m` or `3d 4h`.
pub(crate) fn age(secs: f64) -> String {
    let whole = secs.max(0.0) as u64;
    match whole {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m {}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h {}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d {}h", whole / 86400, whole % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_to_the_widest_cell() {
        let out = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alpha".into()],
                vec!["1234".into(), "b".into()],
            ],
        );
        assert_eq!(out, "ID    NAME\n1     alpha\n1234  b\n");
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(4.25), "4.2s");
        assert_eq!(age(192.0), "3m 12s");
        assert_eq!(age(7500.0), "2h 5m");
        assert_eq!(age(273_600.0), "3d 4h");
        assert_eq!(one_line("a\nb\tc"), "a b c");
    }
}
