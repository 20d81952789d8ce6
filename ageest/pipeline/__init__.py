"""The papermill pipeline and its outputs: `ageest reproduce` (reproduce), every table and
figure declared once (catalogue), their writing (artefacts) and REPORT.md (report)."""
