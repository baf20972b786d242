//! `[storage.s3]`.

use super::Issues;
use crate::util::arn::is_role_arn;

pub(super) fn check_s3(s3: &super::super::S3Storage, issues: &mut Issues<'_>) {
    if !["", "AES256", "aws:kms"].contains(&s3.server_side_encryption.as_str()) {
        issues.add(
            "storage.s3.server_side_encryption",
            format!("{:?} is not a server-side encryption", s3.server_side_encryption),
            "use \"AES256\", \"aws:kms\" or leave it empty for the bucket's default",
        );
    }
    match s3.object_lock_mode.as_str() {
        "" => {}
        "GOVERNANCE" | "COMPLIANCE" if s3.object_lock_days > 0 => {}
        "GOVERNANCE" | "COMPLIANCE" => issues.add(
            "storage.s3.object_lock_days",
            "is 0, so Object Lock would protect nothing",
            "set the number of days recordings must stay undeletable, e.g. 2555 (7 years)",
        ),
        other => issues.add(
            "storage.s3.object_lock_mode",
            format!("{other:?} is not an Object Lock mode"),
            "use \"GOVERNANCE\", \"COMPLIANCE\" or leave it empty",
        ),
    }
    // AWS refuses parts under 5 MiB; S3-compatible stores (a custom endpoint) set their own floor.
    let floor = if s3.endpoint.is_empty() { 5 * 1024 * 1024 } else { 64 * 1024 };
    if s3.part_size < floor {
        issues.add(
            "storage.s3.part_size",
            format!("{} is below the {floor}-byte minimum part", s3.part_size),
            "use at least 5242880 (S3's minimum)",
        );
    }
    if !["keep", "delete"].contains(&s3.local_retention.as_str()) {
        issues.add(
            "storage.s3.local_retention",
            format!("{:?} is not a retention", s3.local_retention),
            "use \"keep\" (local copies stay) or \"delete\" (removed once the upload is confirmed)",
        );
    }
    if s3.bucket.trim().is_empty() {
        issues.add("storage.s3.bucket", "is empty", "name the bucket recordings are uploaded to, or remove [storage.s3]");
    }
    if s3.region.trim().is_empty() {
        issues.add("storage.s3.region", "is empty", "set the bucket's region, e.g. \"us-east-1\"");
    }
    if !s3.assume_role_arn.is_empty() && !is_role_arn(&s3.assume_role_arn) {
        issues.add(
            "storage.s3.assume_role_arn",
            format!("{:?} is not an IAM role ARN", s3.assume_role_arn),
            "use arn:aws:iam::<12-digit account>:role/<name>",
        );
    }
}

/// `[lake]`: it writes into the `[storage.s3]` bucket, and reads recordings the uploader
/// must not delete before it has.
pub(super) fn check_lake(lake: &super::super::LakeSection, s3: Option<&super::super::S3Storage>, issues: &mut Issues<'_>) {
    if !lake.enabled {
        return;
    }
    match s3 {
        None => issues.add(
            "lake.enabled",
            "is true, but there is no [storage.s3] bucket to write to",
            "add a [storage.s3] section, or set lake.enabled = false",
        ),
        Some(s3) if s3.local_retention == "delete" => issues.add(
            "lake.enabled",
            "is true with storage.s3.local_retention = \"delete\": the uploader could delete a recording before the lake has read it",
            "set storage.s3.local_retention = \"keep\" while the lake is on",
        ),
        Some(_) => {}
    }
    if lake.flush_interval < std::time::Duration::from_secs(1) {
        issues.add(
            "lake.flush_interval",
            "is under a second",
            "use a duration such as \"5m\" (Security Lake takes between 5 minutes and a day)",
        );
    }
    if lake.max_object_bytes < 1024 * 1024 {
        issues.add(
            "lake.max_object_bytes",
            format!("{} is under 1 MiB", lake.max_object_bytes),
            "use at least 1048576; the default is 134217728 (128 MiB)",
        );
    }
    for format in &lake.formats {
        if !["dbtape", "ocsf"].contains(&format.as_str()) {
            issues.add("lake.formats", format!("{format:?} is not a lake format"), "use [\"dbtape\"], [\"ocsf\"] or both");
        }
    }
    if lake.formats.is_empty() {
        issues.add(
            "lake.formats",
            "is empty, so the lake would write nothing",
            "use [\"dbtape\"], [\"ocsf\"] or both, or set lake.enabled = false",
        );
    }
    if lake.formats.iter().any(|f| f == "ocsf") {
        if lake.ocsf_account_id.len() != 12 || !lake.ocsf_account_id.bytes().all(|b| b.is_ascii_digit()) {
            issues.add(
                "lake.ocsf_account_id",
                format!("{:?} is not an AWS account id", lake.ocsf_account_id),
                "set the 12-digit account Security Lake's custom source belongs to",
            );
        }
        if lake.ocsf_source_name.is_empty() || lake.ocsf_source_name.contains('/') {
            issues.add(
                "lake.ocsf_source_name",
                format!("{:?} is not a source name", lake.ocsf_source_name),
                "use the custom source's name in Security Lake, e.g. \"dbtape\"",
            );
        }
    }
    if lake.prefix.starts_with('/') || (!lake.prefix.is_empty() && !lake.prefix.ends_with('/')) {
        issues.add(
            "lake.prefix",
            format!("{:?} is not a folder in the bucket", lake.prefix),
            "use a prefix such as \"lake/\": no leading slash, one trailing slash",
        );
    }
}
