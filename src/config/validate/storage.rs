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
