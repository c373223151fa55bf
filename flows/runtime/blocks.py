"""Storage credentials from Prefect blocks: what a flow calls first (:func:`use_storage`).

A flow parameter (``store_block``/``source_block``) names a prefect-aws block
(``s3-bucket/NAME``, ``aws-credentials/NAME`` or ``minio-credentials/NAME``): the parameter is
the block's name, the secret stays in the block. Its s3fs options are registered for the URL
they are for, after those the parent process exported (:mod:`tasks.store.credentials`).
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block

from tasks.errors import ConfigError, first_line
from tasks.store.credentials import import_storage_options
from tasks.store.store import register_storage_options

BLOCK_TYPES = ("s3-bucket", "aws-credentials", "minio-credentials")


def use_storage(
    store: str | None = None,
    *,
    store_block: str | None = None,
    source: str | None = None,
    source_block: str | None = None,
) -> None:
    """What a flow calls first: the options its parent exported, then those of the blocks it names."""
    import_storage_options()
    for url, block in ((store, store_block), (source, source_block)):
        if block:
            if not url:
                raise ConfigError(f"block {block!r} given without the URL it is for")
            register_storage_options(url, block_storage_options(block, url))


def block_storage_options(block_name: str, url: str) -> dict[str, Any]:
    """The s3fs options of a prefect-aws block (``s3-bucket/NAME``, ``aws-credentials/NAME``,
    ``minio-credentials/NAME``) for ``url``."""
    block_type, _, name = block_name.partition("/")
    if block_type not in BLOCK_TYPES or not name:
        raise ConfigError(
            f"invalid block {block_name!r}: expected TYPE/NAME with TYPE one of {', '.join(BLOCK_TYPES)}"
        )
    import prefect_aws  # noqa: F401  (registers the block types; lazy: boto3 costs start-up 0.4 s)

    try:
        block = Block.load(block_name)
    except (ValueError, KeyError) as error:
        reason = first_line(error)
        raise ConfigError(f"cannot load Prefect block {block_name!r}: {reason}") from error
    return storage_options_from_block(block, url, block_name=block_name)


def storage_options_from_block(block: Any, url: str, *, block_name: str = "") -> dict[str, Any]:
    """s3fs options from an ``S3Bucket``, ``AwsCredentials`` or ``MinIOCredentials`` block object."""
    # lazy: prefect_aws (boto3) adds 0.4 s to every flow run's start-up, needed only with a block
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

    label = block_name or type(block).__name__
    if isinstance(block, S3Bucket):
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        if not url.startswith("s3://") or bucket != block.bucket_name:
            raise ConfigError(
                f"block {label!r} is for bucket {block.bucket_name!r}, not for {url!r}: "
                "name the bucket's block, or an aws-credentials block"
            )
        block = block.credentials
    if isinstance(block, MinIOCredentials):
        options: dict[str, Any] = {
            "key": block.minio_root_user,
            "secret": block.minio_root_password.get_secret_value(),
        }
    elif isinstance(block, AwsCredentials):
        options = {}
        if block.assume_role_arn:
            frozen = block.get_boto3_session().get_credentials().get_frozen_credentials()
            options.update(key=frozen.access_key, secret=frozen.secret_key, token=frozen.token)
        else:
            if block.aws_access_key_id:
                options["key"] = block.aws_access_key_id
            if block.aws_secret_access_key is not None:
                options["secret"] = block.aws_secret_access_key.get_secret_value()
            if block.aws_session_token:
                options["token"] = block.aws_session_token
            if block.profile_name:
                options["profile"] = block.profile_name
    else:
        raise ConfigError(
            f"block {label!r} is a {type(block).__name__}: "
            "expected S3Bucket, AwsCredentials or MinIOCredentials"
        )
    client_kwargs: dict[str, Any] = {}
    if block.region_name:
        client_kwargs["region_name"] = block.region_name
    parameters = block.aws_client_parameters
    if parameters.endpoint_url:
        options["endpoint_url"] = parameters.endpoint_url
    if parameters.verify_cert_path:
        client_kwargs["verify"] = str(parameters.verify_cert_path)
    elif parameters.verify is False:
        client_kwargs["verify"] = False
    if not parameters.use_ssl:
        options["use_ssl"] = False
    if parameters.config:
        options["config_kwargs"] = dict(parameters.config)
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options
