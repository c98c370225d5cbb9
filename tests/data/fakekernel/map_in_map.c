int map_in_map;
