"""The statutory workflow: clocks (SEND Regulations 2014) and Task codes."""
