"""Recorded runs: the runs database (checkpoints + a row per run), the file artifact
store, the step log, replays, diffs and the HTML report."""

from openseg_r.runs.database import RunRecord, RunsDB, RunsDBError, default_runs_path
from openseg_r.runs.files import FileArtifactStore, MissingArtifactError

__all__ = ["FileArtifactStore", "MissingArtifactError", "RunRecord", "RunsDB", "RunsDBError", "default_runs_path"]
