"""The version stamp every file amed-deploy writes carries (checkpoints, predictor files, graph records,
engine manifests), with one spelling and one reading policy, so a file from another amed-deploy is
recognised, or refused, the same way whatever its format.

Spelling: ``{"format": TAG, "format_version": N}``. Graph records and engine manifests were first
written as ``schema`` / ``schema_version``; a record without a ``format`` field is read by that older
spelling, so those files keep loading.

Version policy: a version is a positive integer, bumped only by a change that older readers cannot
ignore (a new optional field keeps it). A reader reads its current version and every older one;
`check_stamp` returns the version so a parser can tell an older layout apart. A newer version, or one
that is not a positive integer, is refused with one AmedError.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import __version__
from .errors import AmedError, short_repr

__all__ = ["TAG", "VERSION", "check_stamp", "stamp"]

TAG = "format"
VERSION = "format_version"
_OLD_TAG, _OLD_VERSION = "schema", "schema_version"


def stamp(tag: str, version: int) -> dict[str, str | int]:
    """The stamp fields to put into a record being written."""
    return {TAG: tag, VERSION: version}


def check_stamp(record: Mapping[str, object], tag: str, current: int, what: str, kind: str) -> int:
    """The record's format version, after refusing a foreign tag, a malformed version or a newer one.

    `what` names the record in messages (a file name), `kind` says what it should be
    ("an amed-deploy predictor file").
    """
    tag_key, version_key = (TAG, VERSION) if TAG in record else (_OLD_TAG, _OLD_VERSION)
    found = record.get(tag_key)
    if found != tag:
        got = f"format tag {short_repr(found)}" if tag_key in record else "no format tag"
        raise AmedError(f"{what} is not {kind}: {got}, expected {tag!r}")
    version = record.get(version_key)
    if type(version) is not int or version < 1:  # not True, not 1.0
        raise AmedError(f"{what} has a bad {version_key} {short_repr(version)} (expected an integer 1..{current})")
    if version > current:
        raise AmedError(
            f"{what} is format version {version}, from a newer amed-deploy; this one ({__version__}) reads up to "
            f"{current}: upgrade amed-deploy, or re-create the file with this version"
        )
    return version
