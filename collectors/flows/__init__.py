"""Flow assembly: hops (produce matched with consume), flows by correlation ID, edge aggregates."""
