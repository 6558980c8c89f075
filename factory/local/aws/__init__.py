"""The AWS endpoint: moto's server with AWS's rules, paging and faults, and jobs on a queue."""
