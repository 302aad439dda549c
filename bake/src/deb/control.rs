//! The text members of a .deb: the control paragraph, `md5sums`, `conffiles`, and the
//! copyright and changelog Debian policy expects under `/usr/share/doc/<name>/`.

use std::collections::BTreeMap;

use super::{archive, DataFile, PackageDefinition};

/// The `control` file: fields in the order dpkg writes them.
pub(crate) fn control_paragraph(
    definition: &PackageDefinition,
    files: &BTreeMap<String, DataFile>,
) -> String {
    let mut text = format!(
        "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: {}\nInstalled-Size: {}\n",
        definition.name,
        definition.version,
        definition.architecture,
        definition.maintainer,
        installed_size_kib(files),
    );
    if !definition.depends.is_empty() {
        text.push_str(&format!("Depends: {}\n", definition.depends.join(", ")));
    }
    text.push_str("Section: misc\nPriority: optional\n");
    text.push_str(&format!("Description: {}\n", definition.description.trim()));
    for line in definition.long_description.trim_end().lines() {
        if line.trim().is_empty() {
            text.push_str(" .\n");
        } else {
            for part in wrap(line.trim_end(), DESCRIPTION_WIDTH) {
                text.push_str(&format!(" {part}\n"));
            }
        }
    }
    text
}

/// The widest line of a long description, its leading space included, lintian accepts.
const DESCRIPTION_WIDTH: usize = 80 - 1;

/// `line` cut at spaces into lines of at most `width` characters (a longer word stays whole).
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        let current = lines.last_mut().expect("one line at least");
        if current.is_empty() {
            current.push_str(word);
        } else if current.chars().count() + 1 + word.chars().count() <= width {
            current.push(' ');
            current.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    lines
}

/// `md5sums` of every regular file except conffiles (dpkg tracks those separately), from
/// the MD5 of each file by path.
pub(crate) fn md5sums(definition: &PackageDefinition, md5s: &BTreeMap<String, String>) -> String {
    md5s.iter()
        .filter(|(path, _)| {
            !definition
                .conffiles
                .iter()
                .any(|c| c.trim_start_matches('/') == path.as_str())
        })
        .map(|(path, md5)| format!("{md5}  {path}\n"))
        .collect()
}

pub(crate) fn conffiles(definition: &PackageDefinition) -> String {
    definition
        .conffiles
        .iter()
        .map(|c| format!("{c}\n"))
        .collect()
}

/// The copyright file and changelog policy requires, for definitions that do not ship their own.
pub(crate) fn default_docs(definition: &PackageDefinition) -> Vec<(String, Vec<u8>)> {
    let doc_dir = format!("/usr/share/doc/{}", definition.name);
    let date = chrono::DateTime::from_timestamp(definition.source_date_epoch as i64, 0)
        .unwrap_or_default();
    // Lintian wants a notice with a year; the source's own terms are the repository's.
    let copyright = format!(
        "{name} was packaged by Slipway from its source repository.\n\n\
         Copyright {year} the authors of {name}; the licence terms are those stated in that\n\
         repository.\n\
         Maintainer: {maintainer}\n",
        name = definition.name,
        year = date.format("%Y"),
        maintainer = definition.maintainer,
    );
    // Policy 12.7: native versions (no revision) ship changelog.gz, others changelog.Debian.gz.
    let changelog_name = if definition.version.contains('-') {
        "changelog.Debian.gz"
    } else {
        "changelog.gz"
    };
    let date = date.to_rfc2822();
    let changelog = format!(
        "{name} ({version}) stable; urgency=medium\n\n  * Release {version}, built by Slipway.\n\n -- {maintainer}  {date}\n",
        name = definition.name,
        version = definition.version,
        maintainer = definition.maintainer,
    );
    vec![
        (format!("{doc_dir}/copyright"), copyright.into_bytes()),
        (
            format!("{doc_dir}/{changelog_name}"),
            archive::gzip(changelog.as_bytes(), flate2::Compression::best()),
        ),
    ]
}

/// dpkg-gencontrol's rule: each file rounded up to a KiB, plus one KiB per directory.
fn installed_size_kib(files: &BTreeMap<String, DataFile>) -> u64 {
    let file_kib: u64 = files.values().map(|f| f.size.div_ceil(1024)).sum();
    file_kib + archive::directories(files).len() as u64
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_description_lines_are_wrapped_at_spaces() {
        let line = "Release v12 of hello, built by Slipway from commit 0123456789abcdef0123456789abcdef01234567 (build 40 on main).";
        let lines = wrap(line, 79);
        assert!(lines.iter().all(|l| l.chars().count() <= 79), "{lines:?}");
        assert_eq!(lines.join(" "), line);
        assert_eq!(wrap(&"x".repeat(100), 79), vec!["x".repeat(100)]);
    }
}
