"""coinfer.lab: what drives the processes (demos, benchmarks, the paper reproduction). Nothing imports it."""
