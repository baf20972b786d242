//! The S3 client for `[storage.s3]`: region, endpoint, path-style addressing, credentials
//! from the default chain or through `assume_role_arn`, and the protection every object gets
//! (server-side encryption, Object Lock).

use aws_credential_types::provider::SharedCredentialsProvider;

use crate::aws::credentials::{CacheProvider, CredentialCache};
use crate::config::{AwsOptions, S3Storage};

pub async fn s3_client(settings: &S3Storage) -> aws_sdk_s3::Client {
    // Credentials (the default chain, or through `assume_role_arn`) come from the same cache
    // as the databases' AWS calls, refreshed the same way.
    let options = AwsOptions {
        region: settings.region.clone(),
        endpoint: settings.endpoint.clone(),
        assume_role_arn: settings.assume_role_arn.clone(),
        external_id: settings.external_id.clone(),
        ..AwsOptions::default()
    };
    let cache = std::sync::Arc::new(CredentialCache::new(options));
    // The cache's own SDK settings (region, endpoint): loaded once for both.
    let config = aws_sdk_s3::config::Builder::from(cache.sdk().await)
        .force_path_style(settings.force_path_style)
        .credentials_provider(SharedCredentialsProvider::new(CacheProvider(cache)));
    aws_sdk_s3::Client::from_conf(config.build())
}

pub fn lock_until(settings: &S3Storage) -> aws_sdk_s3::primitives::DateTime {
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(settings.object_lock_days) * 86_400);
    aws_sdk_s3::primitives::DateTime::from(until)
}

macro_rules! protect {
    ($request:expr, $settings:expr) => {{
        let mut request = $request;
        let settings = $settings;
        match settings.server_side_encryption.as_str() {
            "AES256" => request = request.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256),
            "aws:kms" => {
                request = request.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms);
                if !settings.kms_key_id.is_empty() {
                    request = request.ssekms_key_id(&settings.kms_key_id);
                }
            }
            _ => {}
        }
        if !settings.object_lock_mode.is_empty() {
            request = request
                .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::from(settings.object_lock_mode.as_str()))
                .object_lock_retain_until_date(lock_until(settings));
        }
        request
    }};
}

pub fn with_protection(
    request: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    settings: &S3Storage,
) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
    protect!(request, settings)
}

pub fn with_protection_mpu(
    request: aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    settings: &S3Storage,
) -> aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder {
    protect!(request, settings)
}
