int arraymap;
