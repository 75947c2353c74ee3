"""Reporting beside the ledger: the figures the dashboard, routes, MCP tools and chat show.

- :mod:`state.reporting.windows`: calendar days and months in ``BUDGET_TIMEZONE``
  (the budgets' windows) and the day ranges the reports cover;
- :mod:`state.reporting.usage`: the usage report (totals, groups, percentiles,
  savings), ``/stats``' routing split and the usage statistics with budgets;
- :mod:`state.reporting.dashboard`: the dashboard's daily series, alerts and figures;
- :mod:`state.reporting.budget_status`: the status of every budget there is;
- :mod:`state.reporting.estimates`: a prompt priced on every catalog model;
- :mod:`state.reporting.advice` and :mod:`state.reporting.suggestions`: cost
  advice computed from the reports;
- :mod:`state.reporting.money`: dollars formatted for people.

The modules are imported one by one (this package imports none of them), so
:mod:`state.budgets` can use the windows without loading the reports. They
read the ledger and the settings and never import the graphs, the nodes or a
protocol layer: the gateway, the MCP server and the command line call them.
"""
