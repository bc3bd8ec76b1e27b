"""Reading and presenting results: experiment folders, the test evaluation, export of the best trial, report.html."""
