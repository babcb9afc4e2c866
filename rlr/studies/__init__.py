"""Small, self-contained studies that reproduce a claim of a paper with rlr's losses (run each
module with `python -m rlr.studies.NAME`)."""
