"""A BuildKit SBOM generator: lists the Debian packages (dpkg's status database) and the Python
distributions (every `*.dist-info` under a site-packages or dist-packages directory) of the
image BuildKit mounts at BUILDKIT_SCAN_SOURCE, with their versions and package URLs, as one
SPDX 2.3 document written by the SPDX project's own library (spdx-tools, which validates it),
and writes it to BUILDKIT_SCAN_DESTINATION as the in-toto statement BuildKit attaches to the
image. Nothing in the scanned image is run.

Usage (what BuildKit does): BUILDKIT_SCAN_SOURCE=/run/src BUILDKIT_SCAN_DESTINATION=/run/out
python3 generate.py
"""

import hashlib
import io
import json
import os
import re
import sys
from datetime import datetime, timezone
from email.parser import HeaderParser
from pathlib import Path

from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    CreationInfo,
    Document,
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)
from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

TOOL = "memories-sbom-1"


def dpkg_packages(root):
    """(name, version, architecture) of every package dpkg records as installed."""
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return []
    found = []
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            found.append((fields["Package"], fields.get("Version", ""), fields.get("Architecture", "")))
    return found


def python_distributions(root):
    """(name, version, where) of every installed Python distribution, from its METADATA."""
    found = []
    for directory, subdirs, _ in os.walk(root):
        # Never follow links out of the scanned tree, and skip what cannot hold packages.
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]
        if not directory.endswith(("site-packages", "dist-packages")):
            continue
        for name in sorted(subdirs):
            metadata = Path(directory, name, "METADATA")
            if not name.endswith(".dist-info") or not metadata.is_file():
                continue
            headers = HeaderParser().parsestr(metadata.read_text(encoding="utf-8", errors="replace"))
            if headers.get("Name") and headers.get("Version"):
                where = "/" + os.path.relpath(directory, root)
                found.append((headers["Name"], headers["Version"], where))
        subdirs[:] = []
    return found


def spdx_id(kind, name, version, taken):
    """An SPDX element id (letters, digits, `.` and `-` only), unique in the document."""
    base = "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{kind}-{name}-{version}")
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def package(spdx, name, version, purl, comment):
    return Package(
        spdx_id=spdx,
        name=name,
        download_location=SpdxNoAssertion(),
        version=version,
        files_analyzed=False,
        external_references=[
            ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)
        ],
        comment=comment,
    )


def document(root):
    taken = set()
    packages = []
    for name, version, arch in sorted(dpkg_packages(root)):
        purl = f"pkg:deb/debian/{name}@{version}?arch={arch}"
        packages.append(package(spdx_id("deb", name, version, taken), name, version, purl, "dpkg"))
    for name, version, where in sorted(python_distributions(root)):
        normalized = re.sub(r"[-_.]+", "-", name).lower()
        purl = f"pkg:pypi/{normalized}@{version}"
        ident = spdx_id("pypi", name, version, taken)
        packages.append(package(ident, name, version, purl, f"python distribution in {where}"))
    # The namespace names this list of packages: the same image gives the same namespace.
    listing = "\n".join(f"{p.name} {p.version}" for p in packages).encode()
    namespace = f"https://spdx.org/spdxdocs/memories-{hashlib.sha256(listing).hexdigest()}"
    created = datetime.now(timezone.utc).replace(microsecond=0)
    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name="memories image packages",
        document_namespace=namespace,
        creators=[Actor(ActorType.TOOL, TOOL)],
        created=created,
    )
    relationships = [
        Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, p.spdx_id) for p in packages
    ]
    return Document(creation_info=info, packages=packages, relationships=relationships)


def main():
    source = os.environ.get("BUILDKIT_SCAN_SOURCE")
    destination = os.environ.get("BUILDKIT_SCAN_DESTINATION")
    if not source or not destination:
        print("generate.py: set BUILDKIT_SCAN_SOURCE and BUILDKIT_SCAN_DESTINATION", file=sys.stderr)
        return 2
    root = Path(source)
    spdx = document(root)
    text = io.StringIO()
    write_document_to_stream(spdx, text, validate=True)
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "predicate": json.loads(text.getvalue()),
    }
    out = Path(destination, "sbom.spdx.json")
    out.write_text(json.dumps(statement, indent=2), encoding="utf-8")
    count = len(spdx.packages)
    print(f"generate.py: {count} packages listed from {source}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
