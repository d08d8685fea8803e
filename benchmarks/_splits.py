"""The data splits behind every number the benchmarks report (see the READMEs in
../shared/data): training parts, validation parts carved from the training splits (for
choosing checkpoints and settings), and the held-out test splits."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EM = DATA / "isbi2012-em"
NUCLEI = DATA / "dsb2018-nuclei"

#: held-out test splits: EM sections 20-29, nuclei files with index 4 mod 5
TEST = (f"components:{EM}@20-29", f"labels:{NUCLEI}@%5=4")


def validation(em_sections: str = "16-19") -> tuple[str, str]:
    """Validation parts of the training splits: EM sections 16-19 (or fewer), nuclei files
    with index 3 mod 5."""
    return (f"components:{EM}@{em_sections}", f"labels:{NUCLEI}@%5=3")
