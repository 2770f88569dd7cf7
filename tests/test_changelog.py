"""Each release says what changed: CHANGELOG.md (Keep a Changelog) and the upgrade notes.
(That every copy of the version equals bridge.__version__ is in test_consistency.py.)"""
import re

from bridge import __version__
from tests.tools import ROOT

CHANGELOG = (ROOT / "CHANGELOG.md").read_text()


def release(text):
    return tuple(int(part) for part in text.split("."))


def test_the_version_is_the_release_the_changelog_describes():
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", CHANGELOG, re.M)
    assert "0.1.0" in released
    newest = max(released, key=release)
    unreleased = re.search(r"^## \[Unreleased\]\n(.*?)(?=^## \[)", CHANGELOG, re.M | re.S)
    if unreleased and re.search(r"^- ", unreleased.group(1), re.M):
        # Changes wait for a release: the version is already that release's, past the last.
        assert release(__version__) > release(newest)
    else:
        assert __version__ == newest


def test_the_changelog_follows_keep_a_changelog():
    assert CHANGELOG.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in CHANGELOG
    headings = re.findall(r"^### (.+)$", CHANGELOG, re.M)
    assert headings and set(headings) <= {"Added", "Changed", "Deprecated", "Removed",
                                          "Fixed", "Security", "Upgrading"}


def test_the_upgrade_notes_are_linked_from_the_changelog_and_the_readme():
    assert (ROOT / "docs" / "upgrading.md").is_file()
    assert "docs/upgrading.md" in CHANGELOG
    assert "docs/upgrading.md" in (ROOT / "README.md").read_text()
