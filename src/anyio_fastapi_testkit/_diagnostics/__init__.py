"""What the kit watches and reports: time limits, leaked tasks, blocked loops, queries and
the doctor."""
