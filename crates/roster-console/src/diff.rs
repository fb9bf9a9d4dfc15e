//! A line diff for "review before publishing": longest common subsequence
//! over lines, which is plenty for configuration values. Values too large
//! for the quadratic table are reported as a whole replacement.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// Above this many cells (old lines x new lines) the diff is one block.
const MAX_CELLS: usize = 4_000_000;

pub fn lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        return a.iter().map(|l| Line::Removed(l)).chain(b.iter().map(|l| Line::Added(l))).collect();
    }
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] =
                if a[i] == b[j] { lcs[(i + 1) * w + j + 1] + 1 } else { lcs[(i + 1) * w + j].max(lcs[i * w + j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Line::Removed(l)));
    out.extend(b[j..].iter().map(|l| Line::Added(l)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_line_is_one_removal_and_one_addition() {
        let d = lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, vec![Line::Same("a"), Line::Removed("b"), Line::Added("B"), Line::Same("c"), Line::Added("d")]);
    }

    #[test]
    fn identical_values_have_no_changes() {
        assert!(lines("x\ny", "x\ny").iter().all(|l| matches!(l, Line::Same(_))));
    }
}
