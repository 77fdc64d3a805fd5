"""The service state a lab should serve: its scenario's services, then every apply and delete
since, in order. Each change is kept as the document it came from (a journal beside the lab's
record), so a restarted agent, of this version or a later one, rebuilds the same state by
replaying them; nothing version-specific is stored."""
from __future__ import annotations

import glob
import hashlib
import os

from ...errors import LabError
from ...lab import state
from ...spec.changes import apply_files, delete_service
from ...spec.scenario import load as load_scenario


def scenario_digest(path: str) -> str:
    """A SHA-256 of the scenario file and of every manifest file it names: what the lab's
    services at `up` were built from."""
    import yaml
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        text = f.read()
    digest.update(text)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    for item in (doc.get("manifests") or [] if isinstance(doc, dict) else []):
        if isinstance(item, str):
            try:
                with open(os.path.join(os.path.dirname(path), item), "rb") as f:
                    digest.update(b"\0" + item.encode() + b"\0" + f.read())
            except OSError:
                digest.update(b"\0" + item.encode() + b"\0(missing)")
    return digest.hexdigest()


class Desired:
    def __init__(self, record: state.LabRecord):
        self.record = record
        self.journal = os.path.join(state.lab_files(record.name), "journal")
        os.makedirs(self.journal, exist_ok=True)
        if record.scenario_sha256 and scenario_digest(record.scenario) != record.scenario_sha256:
            raise LabError(f"lab {record.name}: its scenario {record.scenario} (or a manifest it names) changed "
                           f"since the lab came up, "
                           f"so its services cannot be rebuilt from it; restore the file, or bring the lab "
                           f"up again (`dataplane down {record.name}`, then `up`)")
        self.scenario = load_scenario(record.scenario)
        self.cluster = self.scenario.cluster
        self.ignored: list[str] = []
        for entry in self.entries():
            self.cluster, _ = apply_files(self.cluster, [entry], self.ignored)

    def entries(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.journal, "[0-9]" * 6 + "-*")))

    def table(self):
        return self.cluster.table()

    # A change is journaled first, then synced; if the sync fails, its entries are dropped again.

    def prepare_apply(self, paths: list[str]) -> tuple:
        """(new cluster, lines, journal texts) for applying files; raises on an invalid file."""
        new, lines = apply_files(self.cluster, paths, self.ignored)
        texts = []
        for p in paths:
            with open(p) as f:
                texts.append((os.path.basename(p), f.read()))
        return new, lines, texts

    def prepare_delete(self, key: str) -> tuple:
        new, lines = delete_service(self.cluster, key)
        key = key if "/" in key else f"default/{key}"
        return new, lines, [("delete.yaml", f"# dataplane delete service/{key}\ndeleteServices: [{key}]\n")]

    def write(self, texts: list) -> list[str]:
        n = len(self.entries())
        written = []
        for i, (name, text) in enumerate(texts, n + 1):
            path = os.path.join(self.journal, f"{i:06d}-{name}")
            tmp = os.path.join(self.journal, f".{i:06d}.tmp")      # never matched by entries()
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            written.append(path)
        return written

    @staticmethod
    def drop(written: list[str]) -> None:
        for path in written:
            if os.path.exists(path):
                os.unlink(path)
