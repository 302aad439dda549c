//! Decodes Packer's `-machine-readable` output: `timestamp,target,type,data...` per line.

/// What one line of Packer's machine-readable output says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PackerEvent {
    /// Text for a person (`ui` lines), already unescaped; it may hold several lines.
    Ui { error: bool, text: String },
    /// `artifact,<n>,id,<id>` of a build: a Docker image id, or `region:ami,...` for AMIs.
    ArtifactId { index: u32, id: String },
    /// `<source>,error,<message>`: why a build failed.
    BuildError { message: String },
    /// Anything else machine-readable (counts, artifact details).
    Other,
    /// A line that is not machine-readable output (Packer's own crash text, say).
    Plain(String),
}

/// Parses one line (without its newline).
pub(crate) fn parse_line(line: &str) -> PackerEvent {
    let mut fields = line.splitn(4, ',');
    let (Some(timestamp), Some(_target), Some(kind)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return PackerEvent::Plain(line.to_string());
    };
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return PackerEvent::Plain(line.to_string());
    }
    let data: Vec<String> = fields
        .next()
        .map(|rest| rest.split(',').map(unescape).collect())
        .unwrap_or_default();
    match (kind, data.as_slice()) {
        ("ui", [level, text, ..]) => PackerEvent::Ui {
            error: level == "error",
            text: text.clone(),
        },
        ("artifact", [index, key, id, ..]) if key == "id" => match index.parse() {
            Ok(index) => PackerEvent::ArtifactId {
                index,
                id: id.clone(),
            },
            Err(_) => PackerEvent::Other,
        },
        ("error", [message, ..]) => PackerEvent::BuildError {
            message: message.clone(),
        },
        _ => PackerEvent::Other,
    }
}

/// Undoes Packer's escaping of one data field: commas, newlines and carriage returns.
fn unescape(field: &str) -> String {
    field
        .replace("%!(PACKER_COMMA)", ",")
        .replace("\\n", "\n")
        .replace("\\r", "\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_lines_are_unescaped() {
        let event = parse_line(
            "1795346966,,ui,message,    docker: TASK [Add it%!(PACKER_COMMA) signed] ***",
        );
        assert_eq!(
            event,
            PackerEvent::Ui {
                error: false,
                text: "    docker: TASK [Add it, signed] ***".into()
            }
        );
        let event = parse_line("1795347041,,ui,error,\\n==> Some builds didn't complete");
        assert_eq!(
            event,
            PackerEvent::Ui {
                error: true,
                text: "\n==> Some builds didn't complete".into()
            }
        );
    }

    #[test]
    fn artifact_ids_of_images_and_amis() {
        assert_eq!(
            parse_line("1700000000,docker,artifact,0,id,sha256:0123abcd"),
            PackerEvent::ArtifactId {
                index: 0,
                id: "sha256:0123abcd".into()
            }
        );
        assert_eq!(
            parse_line("1700000000,amazon-ebs,artifact,0,id,eu-west-1:ami-0abc%!(PACKER_COMMA)us-east-1:ami-0def"),
            PackerEvent::ArtifactId {
                index: 0,
                id: "eu-west-1:ami-0abc,us-east-1:ami-0def".into()
            }
        );
        assert_eq!(
            parse_line("1700000000,docker,artifact,0,builder-id,packer.docker"),
            PackerEvent::Other
        );
    }

    #[test]
    fn build_errors_and_plain_lines() {
        assert_eq!(
            parse_line("1795347041,docker,error,Error executing Ansible: exit status 2"),
            PackerEvent::BuildError {
                message: "Error executing Ansible: exit status 2".into()
            }
        );
        assert_eq!(
            parse_line("panic: runtime error"),
            PackerEvent::Plain("panic: runtime error".into())
        );
        assert_eq!(parse_line("1795347041,,error-count,1"), PackerEvent::Other);
    }
}
