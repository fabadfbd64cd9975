"""Measurement: generation and teacher-forced scoring, rates with intervals, CASD. Imports `unbackdoor.data`,
`unbackdoor.training` and `unbackdoor.running`, never a stage."""
