"""A benchmark's result file: named by what, card and time, written whole."""

import json
import re

from transferlab.bench_results import write_result


def test_result_file_name_and_content(tmp_path):
    path = write_result({"wall_s": 1.5}, tmp_path / "results", "w300", "mistral-7b", "NVIDIA H100 80GB/SXM")
    assert re.fullmatch(r"w300_mistral-7b_NVIDIA_H100_80GB_SXM_\d{8}-\d{6}\.json", path.name)
    assert path.parent == tmp_path / "results"  # created
    assert json.loads(path.read_text()) == {"wall_s": 1.5}
